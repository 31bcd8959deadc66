"""Crash and resume: `kill -9` of a day's run at about half its calls, then a re-run; what was paid twice.

1. A clean run of the day on its own store counts the API calls one run makes.
2. On a second store, the same day is launched as the README launches a day
   (`dagster asset materialize ... --partition DAY`), its process group is killed with
   SIGKILL once the server has answered about half the clean run's calls, and the day
   is run again to the end.
Prints the calls of both runs against the clean run (goal: at most 1.02x: every paid answer
is in the spool as it arrives, so only calls in flight are repeated) and whether the ledger
holds every billed attempt of both (the server's own billing record, less answers that were
in flight at the kill, which the ledger records as billing unknown). The stores are DuckDB
files, or with `--store lake` two DuckLakes on a throwaway local PostgreSQL.

    python bench/crash_resume.py [--turns 20000] [--latency-ms 20] [--checkpoint-every-s S] [--store lake]
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

from results import record  # noqa: E402

from cost_pipeline.gemini.local_endpoint import ServerConfig, admin, running_local_server
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.storage.connect import connect
from cost_pipeline.storage.lake import LAKE_DATA_ENV, LAKE_PREFIX, is_lake
from cost_pipeline.storage.local_postgres import free_port, running_postgres

DAY = date(2026, 11, 1)
REPO = Path(__file__).parents[1]
DAILY = "raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls,daily_cost_rollup"


def launch(folder: Path, database: str, url: str, checkpoint_every_s: float | None) -> subprocess.Popen:
    """The day's daily assets in a run of their own process group; `database` a DuckDB file or a lake."""
    store = {"COST_PIPELINE_WAREHOUSE": database} if is_lake(database) else {"COST_PIPELINE_DB": database}
    env = {
        **os.environ,
        "DAGSTER_HOME": str(folder / "home"),
        **store,
        "COST_PIPELINE_LANDING": str(folder / "landing"),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
        "COST_PIPELINE_BILLING": str(folder / "billing"),
        "GOOGLE_GEMINI_BASE_URL": url,
    }
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        env.pop(name, None)
    config = {"ops": {"turns_through_gemini": {"config": {"checkpoint_every_s": checkpoint_every_s}}}}
    if checkpoint_every_s is None:  # the store's default
        config = {}
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster")),
            "asset",
            "materialize",
            "-m",
            "cost_pipeline.definitions",
            "--select",
            DAILY,
            "--partition",
            str(DAY),
            "--config-json",
            json.dumps(config),
        ],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(run: subprocess.Popen) -> None:
    _, errors = run.communicate(timeout=7200)
    if run.returncode != 0:
        raise SystemExit(f"run failed: {errors[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--checkpoint-every-s", type=float, help="default: the store's (5 s file, 1 s lake)")
    parser.add_argument(
        "--store", choices=["file", "lake"], default="file", help="lake: DuckLake on a local PostgreSQL"
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        url = stack.enter_context(running_local_server(ServerConfig(latency_ms=args.latency_ms)))
        folder = Path(tmp)
        (folder / "home").mkdir()
        if args.store == "lake":
            postgres = stack.enter_context(running_postgres(free_port(), ("lake", "clean")))
            os.environ[LAKE_DATA_ENV] = str(folder / "lake-data")
            clean_store = LAKE_PREFIX + postgres.replace("dbname=postgres", "dbname=clean")
            store = LAKE_PREFIX + postgres.replace("dbname=postgres", "dbname=lake")
        else:
            clean_store, store = str(folder / "clean.duckdb"), str(folder / "store.duckdb")
        generate(folder / "landing", DAY, 1, args.turns, seed=7)
        started = time.perf_counter()
        finish(launch(folder, clean_store, url, args.checkpoint_every_s))
        clean_s = time.perf_counter() - started
        clean = admin(url, "/admin/stats")["requests"]

        admin(url, "/admin/reset", {})
        run = launch(folder, store, url, args.checkpoint_every_s)
        while admin(url, "/admin/stats").get("requests", 0) < clean // 2:
            if run.poll() is not None:
                raise SystemExit("the run ended before it could be killed; use more turns")
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        killed = admin(url, "/admin/stats")["requests"]
        finish(launch(folder, store, url, args.checkpoint_every_s))
        total = admin(url, "/admin/stats")["requests"]
        billed = {r["response_id"] for r in admin(url, "/admin/billing")["records"]}
        with connect(store, read_only=True) as connection:
            ledger = {r for (r,) in connection.execute("SELECT response_id FROM llm_attempts WHERE billed").fetchall()}
            unknown = connection.execute("SELECT count(*) FROM llm_attempts WHERE billed IS NULL").fetchall()[0][0]
    figures = {
        "turns": args.turns,
        "clean_calls": clean,
        "killed_run_calls": killed,
        "resume_calls": total - killed,
        "ratio": total / clean,
        "billed": len(billed),
        "in_ledger": len(billed & ledger),
        "missing_from_ledger": len(billed - ledger),
        "billing_unknown": unknown,
        "clean_run_s": round(clean_s, 1),
    }
    print(
        f"{args.turns:,} turns on the {args.store}, server latency {args.latency_ms:.0f} ms, checkpoints every "
        f"{args.checkpoint_every_s or 'default'} s"
    )
    print(f"clean run: {clean:,} API calls in {clean_s:.0f} s")
    print(
        f"killed at {killed:,} calls, resumed with {total - killed:,}: {total:,} calls in all = "
        f"{total / clean:.3f}x a clean run (goal <= 1.02)"
    )
    print(
        f"ledger: {len(billed & ledger):,} of {len(billed):,} billed answers; the {len(billed - ledger)} "
        "missing were in "
        f"flight at the kill and are among the {unknown} attempts recorded as billing unknown"
    )
    record(
        "crash_resume.py" + (" --store lake" if args.store == "lake" else ""),
        f"crash and resume: {args.turns:,}-turn day killed halfway on the {args.store} "
        f"(server latency {args.latency_ms:g} ms), re-run",
        f"**{total / clean:.3f}x** the API calls of a clean run; every billed answer in the ledger bar "
        f"{len(billed - ledger)} in flight, recorded billing unknown",
        "<= 1.02",
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
