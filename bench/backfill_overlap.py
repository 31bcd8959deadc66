"""A backfill one run at a time vs several at once, through the daemon as the README launches it.

Generates `--days` days of `--turns` turns, starts one shared local model server at
`--latency-ms`, and runs the same backfill twice, each time with a fresh DAGSTER_HOME
(the project's instance profile with `max_concurrent_runs` set to 1, then `--parallel`),
a fresh DuckDB file (so the response cache of the first mode cannot help the second;
with `--store lake`, a fresh DuckLake on a throwaway local PostgreSQL) and a fresh billing folder:

    dagster-daemon run -m cost_pipeline.definitions        (its own process group)
    dagster job backfill -m cost_pipeline.definitions -j daily_pipeline --from .. --to .. --noprompt

The daemon is started and seen heartbeating before the backfill is launched, so its
start-up is not in the figure; the wall time runs from launching the CLI to the end of
the backfill's last run. Failed runs, and failures or error logs that mention a lock
(DuckDB's file lock, or SQLite's in the Dagster instance), are counted; lock waits that
ended well are counted apart. Each mode also says about how much CPU its processes used
and how busy the whole machine was (on a shared 2-core machine, other work skews the
ratio). The last line printed is a JSON object of the figures.

Goal: `--parallel 4` takes at most 0.35x the time of one at a time, with no lock failure.
"""

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

import dagster as dg
import yaml
from results import record  # noqa: E402

from cost_pipeline.config import API_KEY_ENVS, BASE_URL_ENV, BILLING_ENV, COSTS_ENV, DB_ENV, LANDING_ENV, WAREHOUSE_ENV
from cost_pipeline.gemini.local_endpoint import ServerConfig, admin, running_local_server
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.storage.lake import LAKE_DATA_ENV, LAKE_PREFIX
from cost_pipeline.storage.local_postgres import free_port, running_postgres

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = REPO / ".dagster_home" / "dagster.yaml"
START = date(2026, 11, 1)
MODULE = "cost_pipeline.definitions"
FAILURE_EVENTS = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT}
LOCK_WORD = re.compile(r"\block(s|ed|ing)?\b", re.IGNORECASE)
LOCK_WAIT = re.compile(r"waited (\d+(?:\.\d+)?)s .*for the (?:lock on DuckDB file|lake's)")
# Error text of a lock that was not waited out: DuckDB's, our connect helper's timeout, SQLite's.
LOCK_ERROR = re.compile(
    r"could not set lock|stayed locked|database is locked|\block\b.*(timeout|timed out)|"
    r"(error|exception|failed).*\block\b",
    re.IGNORECASE,
)


def write_home(home: Path, max_concurrent_runs: int) -> Path:
    """The project's instance profile (queued runs through the daemon) with this mode's run limit."""
    home.mkdir(parents=True)
    profile = yaml.safe_load(PROFILE.read_text()) or {}
    profile.setdefault("concurrency", {}).setdefault("runs", {})["max_concurrent_runs"] = max_concurrent_runs
    (home / "dagster.yaml").write_text(yaml.safe_dump(profile))
    # Create the SQLite storage once, before the daemon and the CLI race to create it.
    dg.DagsterInstance.from_config(str(home)).dispose()
    return home


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the daemon's process group (daemon, code server, run workers), then SIGKILL what is left."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=30)


def wait_for_daemon(instance: dg.DagsterInstance, daemon: subprocess.Popen, since: float, log: Path) -> float:
    """Seconds until the queued-run coordinator heartbeats."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}: {log.read_text()[-3000:]}")
        beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
        if beat is not None and beat.timestamp >= since:
            return time.time() - since
        time.sleep(0.2)
    raise RuntimeError(f"dagster-daemon never heartbeat within 180s: {log.read_text()[-3000:]}")


def most_at_once(spans: list[tuple[float, float]]) -> int:
    return max((sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans), default=0)


def lock_evidence(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float, list[str]]:
    """(lock waits, seconds waited, failure or error messages that mention a lock) in a run's event log."""
    waits, waited, failures = 0, 0.0, []
    for entry in instance.all_logs(run_id):
        text = entry.user_message or ""
        event = entry.dagster_event
        if event is not None and event.event_specific_data is not None:
            text += " " + str(event.event_specific_data)
        found = LOCK_WAIT.search(text)
        if found:
            waits += 1
            waited += float(found.group(1))
            continue
        is_failure = (
            event is not None
            and event.event_type in FAILURE_EVENTS
            and (event.event_type != dg.DagsterEventType.ENGINE_EVENT or "error" in text.lower())
        )
        is_error = entry.level >= 40  # logging.ERROR
        if (is_failure or is_error) and LOCK_WORD.search(text):
            failures.append(text[:500])
    return waits, waited, failures


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class CpuMeter:
    """About how much CPU this bench's processes (the daemon's group: daemon, code servers, run workers; the model
    server; the backfill CLI; this process) used over one mode, and how busy the whole machine was meanwhile."""

    def __init__(self, pgid: int):
        self.pgid, self.ticks, self.cli_s = pgid, {}, 0.0
        self.machine, self.started, self.own = (
            machine_ticks(),
            time.monotonic(),
            resource.getrusage(resource.RUSAGE_SELF),
        )
        self.sample(baseline=True)

    def sample(self, baseline: bool = False) -> None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            ppid, pgrp, ticks = int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])
            if pgrp == self.pgid or ppid == os.getpid():
                pid = int(stat.parent.name)
                first = self.ticks.get(pid, (ticks if baseline else 0, 0))[0]
                self.ticks[pid] = (first, ticks)

    def timed_child(self, *args, **kwargs) -> subprocess.CompletedProcess:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(*args, **kwargs)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cli_s += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return result

    def figures(self) -> dict:
        wall = time.monotonic() - self.started
        own = resource.getrusage(resource.RUSAGE_SELF)
        own_s = (own.ru_utime + own.ru_stime) - (self.own.ru_utime + self.own.ru_stime)
        bench_s = sum(last - first for first, last in self.ticks.values()) * TICK_S + self.cli_s + own_s
        busy, total = (now - then for now, then in zip(machine_ticks(), self.machine))
        cores = os.cpu_count() or 1
        machine_cores = cores * busy / total if total else 0.0
        return {
            "cpu_cores": cores,
            "bench_cpu_s": round(bench_s, 1),
            "bench_busy_cores": round(bench_s / wall, 2),
            "machine_busy_cores": round(machine_cores, 2),
            "other_busy_cores": round(max(0.0, machine_cores - bench_s / wall), 2),
        }


def failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """The innermost error of a run's first failed step (or of the run), in one line."""
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}):
        error = getattr(entry.dagster_event.event_specific_data, "error", None)
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            return error.message.strip().splitlines()[0][:300]
        return (entry.user_message or "").strip()[:300]
    return "no failure event (killed or canceled?)"


def run_mode(
    name: str,
    concurrency: int,
    folder: Path,
    landing: Path,
    server_url: str,
    days: list[str],
    timeout_s: float,
    lake: str | None = None,
) -> dict:
    """One backfill through the daemon at `concurrency` runs at once, into a fresh DuckDB file, or a fresh `lake`."""
    home = write_home(folder / "dagster_home", concurrency)
    billing = folder / "billing"
    store = (
        {WAREHOUSE_ENV: lake, LAKE_DATA_ENV: str(folder / "lake-data")}
        if lake
        else {DB_ENV: str(folder / "store.duckdb")}
    )
    env = {key: value for key, value in os.environ.items() if key not in API_KEY_ENVS}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            **store,
            LANDING_ENV: str(landing),
            BILLING_ENV: str(billing),
            COSTS_ENV: str(REPO / "costs.toml"),
            BASE_URL_ENV: server_url,
        }
    )
    admin(server_url, "/admin/reset", {})
    daemon_log = folder / "daemon.log"
    started = time.time()
    with open(daemon_log, "w") as log_file:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", MODULE],
            env=env,
            cwd=folder,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cpu = CpuMeter(daemon.pid)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            daemon_startup_s = wait_for_daemon(instance, daemon, started, daemon_log)
            launched_at = time.time()
            launch = cpu.timed_child(
                [
                    str(BIN / "dagster"),
                    "job",
                    "backfill",
                    "-m",
                    MODULE,
                    "-j",
                    "daily_pipeline",
                    "--from",
                    days[0],
                    "--to",
                    days[-1],
                    "--noprompt",
                ],
                env=env,
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=300,
            )
            launch_s = time.time() - launched_at
            if launch.returncode != 0:
                raise RuntimeError(f"dagster job backfill failed: {launch.stderr[-3000:]}")
            backfill = re.search(r"Launched backfill job `([^`]+)`", launch.stdout)
            if backfill is None:
                raise RuntimeError(f"dagster job backfill launched nothing: {launch.stdout[-2000:]}")
            runs_filter = dg.RunsFilter(tags={"dagster/backfill": backfill.group(1)})
            deadline = time.monotonic() + timeout_s
            while True:
                records = instance.get_run_records(runs_filter)
                if len(records) == len(days) and all(r.dagster_run.is_finished for r in records):
                    break
                if time.monotonic() > deadline:
                    states = sorted(
                        (r.dagster_run.tags.get("dagster/partition"), r.dagster_run.status.value) for r in records
                    )
                    raise RuntimeError(f"{name}: runs not finished after {timeout_s:.0f}s: {states}")
                if daemon.poll() is not None:
                    raise RuntimeError(f"dagster-daemon died ({daemon.returncode}): {daemon_log.read_text()[-3000:]}")
                cpu.sample()
                time.sleep(0.5)
            cpu.sample()
            others = [
                r for r in instance.get_run_records() if r.dagster_run.tags.get("dagster/backfill") != backfill.group(1)
            ]
            spans = sorted((r.start_time, r.end_time) for r in records if r.start_time and r.end_time)
            failed = [r for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
            reasons = [
                f"{r.dagster_run.tags.get('dagster/partition', '?')}: {failure_reason(instance, r.dagster_run.run_id)}"
                for r in failed
            ]
            waits = waited = 0
            lock_failures: list[str] = []
            for record in records:
                run_waits, run_waited, run_failures = lock_evidence(instance, record.dagster_run.run_id)
                waits, waited = waits + run_waits, waited + run_waited
                lock_failures += run_failures
            cpu_figures = cpu.figures()
    finally:
        stop_group(daemon)
    daemon_lines = [
        line.strip()
        for line in daemon_log.read_text(errors="replace").splitlines()
        if LOCK_ERROR.search(line) and not LOCK_WAIT.search(line)
    ]
    stats = admin(server_url, "/admin/stats")
    wall = max(end for _, end in spans) - launched_at
    gaps = [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:]) if later[0] > earlier[1]]
    return {
        "mode": name,
        "max_concurrent_runs": concurrency,
        "wall_s": round(wall, 2),
        "runs": len(records),
        "succeeded": len(records) - len(failed),
        "failed": len(failed),
        "failure_reasons": sorted(reasons),
        "lock_failures": len(lock_failures) + len(daemon_lines),
        "lock_failure_messages": (lock_failures + daemon_lines)[:5],
        "lock_waits": waits,
        "lock_wait_s": round(waited, 1),
        "most_runs_at_once": most_at_once(spans),
        "mean_run_s": round(sum(end - start for start, end in spans) / len(spans), 2),
        "launch_cli_s": round(launch_s, 2),
        "first_run_start_after_launch_s": round(spans[0][0] - launched_at, 2),
        "idle_between_runs_s": round(sum(gaps), 2),
        "daemon_startup_s": round(daemon_startup_s, 2),
        "other_runs": sorted(f"{r.dagster_run.job_name}:{r.dagster_run.status.value}" for r in others),
        "model_requests": stats.get("requests", 0),
        **cpu_figures,
    }


def describe(result: dict) -> str:
    return (
        f"{result['mode']:>10} (max_concurrent_runs={result['max_concurrent_runs']}): {result['wall_s']:8.1f} s wall, "
        f"{result['succeeded']}/{result['runs']} runs succeeded, {result['failed']} failed, "
        f"{result['lock_failures']} lock failures, {result['lock_waits']} lock waits ({result['lock_wait_s']} s), "
        f"at most {result['most_runs_at_once']} runs at once, {result['mean_run_s']:.1f} s per run, "
        f"{result['model_requests']} model requests; CLI {result['launch_cli_s']:.1f} s, first run started "
        f"{result['first_run_start_after_launch_s']:.1f} s after launch, {result['idle_between_runs_s']:.1f} s "
        f"with no run going; daemon up in {result['daemon_startup_s']:.1f} s (not counted); CPU: this bench "
        f"{result['bench_busy_cores']:.2f} cores, the machine {result['machine_busy_cores']:.2f} of "
        f"{result['cpu_cores']} (other processes {result['other_busy_cores']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2_000, help="turns per day")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--parallel", type=int, default=4, help="max_concurrent_runs of the second mode")
    parser.add_argument("--timeout-s", type=float, default=3_600.0, help="per mode")
    parser.add_argument(
        "--store", choices=["file", "lake"], default="file", help="lake: DuckLakes on a local PostgreSQL"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (homes, daemon logs, DuckDB files)")
    args = parser.parse_args()
    # A plain `kill` of this bench still stops the daemons it started (the `finally` blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    days = [(START + timedelta(days=offset)).isoformat() for offset in range(args.days)]
    folder = Path(tempfile.mkdtemp(prefix="backfill_overlap_"))
    try:
        landing = folder / "landing"
        summaries = generate(landing, START, days=args.days, turns_per_day=args.turns, seed=7)
        print(
            f"{args.days} days x {args.turns} turns ({sum(s.good_lines for s in summaries)} good lines) in {landing}; "
            f"model server at {args.latency_ms:g} ms",
            flush=True,
        )
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(running_local_server(ServerConfig(latency_ms=args.latency_ms)))
            lakes = dict.fromkeys(("sequential", "parallel"))
            if args.store == "lake":  # a lake per mode, so the first mode's cache cannot help the second
                postgres = stack.enter_context(running_postgres(free_port(), tuple(lakes)))
                lakes = {name: LAKE_PREFIX + postgres.replace("dbname=postgres", f"dbname={name}") for name in lakes}
            results = []
            for name, concurrency in (("sequential", 1), ("parallel", args.parallel)):
                mode = run_mode(name, concurrency, folder / name, landing, url, days, args.timeout_s, lakes[name])
                results.append(mode)
                print(describe(results[-1]), flush=True)
                for reason in results[-1]["failure_reasons"]:
                    print(f"    failed {reason}", flush=True)
                for message in results[-1]["lock_failure_messages"]:
                    print(f"    lock: {message}", flush=True)
        sequential, parallel = results
        ratio = parallel["wall_s"] / sequential["wall_s"]
        goal = (
            ratio <= 0.35
            and parallel["lock_failures"] == sequential["lock_failures"] == 0
            and parallel["failed"] == sequential["failed"] == 0
        )
        print(
            f"ratio parallel / sequential: {ratio:.3f} "
            f"(goal <= 0.35 with no lock failure: {'met' if goal else 'NOT met'})"
        )
        record(
            "backfill_overlap.py" + (" --store lake" if args.store == "lake" else ""),
            f"backfill overlap on the {args.store}: {args.days} days x {args.turns:,} turns, {args.parallel} runs at "
            "once vs one at a time",
            f"{parallel['wall_s']:.1f} s vs {sequential['wall_s']:.1f} s: **{ratio:.3f}**",
            "<= 0.35",
        )
        if args.keep:
            print(f"kept {folder}")
        print(
            json.dumps(
                {
                    "days": args.days,
                    "turns": args.turns,
                    "latency_ms": args.latency_ms,
                    "parallel": args.parallel,
                    "sequential_s": sequential["wall_s"],
                    "parallel_s": parallel["wall_s"],
                    "ratio": round(ratio, 4),
                    "failed_runs": sequential["failed"] + parallel["failed"],
                    "lock_failures": sequential["lock_failures"] + parallel["lock_failures"],
                    "lock_waits": sequential["lock_waits"] + parallel["lock_waits"],
                    "goal_met": goal,
                    "modes": results,
                }
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
