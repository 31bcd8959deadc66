"""Pipeline vs bare SDK loop: the Gemini stage's overhead on a zero-latency local server.

1. Generates a day of N turns (default 39,000) and lands raw_turns.
2. Materializes `turns_through_gemini` end to end (Dagster step, DuckDB read, cache,
   concurrency, retries machinery, frames, one batch write) against the shipped server
   in its own process, with rate limits out of the way, and counts the API calls the
   server answered.
3. Rebuilds exactly those API requests from the stored tables and sends them with a
   bare `client.aio.models.generate_content` loop at the same concurrency, twice: with the
   contents as `types.Content` objects, as the SDK's documentation writes them (the loop the
   goal is measured against since this bench began), and as plain dicts (`ContentDict`), the
   form the stage sends since the SDK reads dicts for 3.45 M fewer instructions a call
   (`gemini/client.py`'s `request_contents`). Against the first the ratio is what a user's own
   loop would get; against the second it is the cost of the stage's own code alone.
Steps 1-3 are one round, on a fresh database each (a cache left by the last round would
answer for free); odd rounds run the pipeline, the typed loop, then the dict loop, even
rounds the other way round: the goal's two sides always run next to each other, and a
drift in the machine's speed during a round does not favour one side. Steps 2 and 3 each run in a
fresh Python process, timed inside it from the first call to the last: the step as a
Dagster run process would run it, and the bare loop as a user's own script would, with
nothing else on its heap (a bare loop on a heap holding Dagster and earlier rounds would pay for
collecting it). On a 2-core VM the same bare loop's
speed drifts from minute to minute, so one round cannot show a 5% gap: each round's ratio is
printed and the median is the figure. Each side's
loop thread is CPU-bound (its CPU seconds are within 3% of its wall seconds) and it waits
little for a core (the run-queue wait printed, from /proc/thread-self/schedstat): the
spread comes from how fast the same code runs from minute to minute (this machine is a VM
without hardware counters), not from the sides starving each other.
Prints calls/s for each and both ratios (goal: pipeline >= 0.95 of the typed bare loop, issue 10).

With --instructions it counts instructions instead of seconds, which this VM's drifting
speed cannot change: each side runs under valgrind's callgrind at two day sizes (a quarter of
--turns, and --turns), and the difference between the sizes divided by the difference in API
calls is the instructions one more call costs, start-up and the step's fixed work left out.
The step runs with its checkpoint and progress intervals stretched by valgrind's slowdown
(about 50x), so time-driven work happens per call about as often as it does natively, and
with chunks small enough that its writer process starts at both sizes, as it does on a real
day (the writer's instructions, on the other core, are not counted). Needs valgrind.

    python bench/gemini_overhead.py [--turns 39000] [--concurrency 64] [--rounds 3]
    python bench/gemini_overhead.py --instructions [--turns 2400]
"""

import argparse
import asyncio
import json
import os
import pickle
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault(
    "COST_PIPELINE_START", "2026-01-01"
)  # keeps the fixed bench days inside the partitions (children inherit it)

from google import genai
from google.genai import types
from results import record  # noqa: E402

from cost_pipeline.gemini.prompts import cleaning_request, function_request
from cost_pipeline.gemini.sdk_request import content_config, request_contents
from cost_pipeline.gemini_step.loop_thread import thread_schedule

DAY = date(2026, 11, 1)


def server_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/admin/stats") as response:
        return json.loads(response.read()).get("requests", 0)


def rebuild_requests(database: Path, gemini) -> list:
    """The API requests the pipeline sent (cache hits excluded), rebuilt from cleaned_turns and llm_calls."""
    import duckdb

    with duckdb.connect(str(database), read_only=True) as connection:
        rows = connection.execute("""
            SELECT t.conversation_id, t.turn_index, t.speaker, t.raw_text, t.cleaned_text, c.stage, c.cache_hit
            FROM cleaned_turns t JOIN llm_calls c USING (turn_id)
            ORDER BY t.evaluation_id, t.conversation_id, t.turn_index, c.stage""").fetchall()
    requests, context, conversation = [], [], None
    for conversation_id, _, speaker, raw, cleaned, stage, cache_hit in rows:
        if conversation_id != conversation:
            context, conversation = [], conversation_id
        if stage == "clean":
            if not cache_hit:
                requests.append(
                    cleaning_request(gemini.models.clean_model, speaker, raw, gemini.models.window(context), None)
                )
            context.append((speaker, cleaned))
        elif not cache_hit:
            requests.append(function_request(gemini.models.function_model, cleaned, None))
    return requests


CONTENT_FORMS = {
    "typed": lambda request: [
        types.Content(role="user", parts=[types.Part(text=p) for p in parts]) for parts in request.contents
    ],
    "dicts": request_contents,
}
"""How a bare loop writes a request's contents: SDK objects, or the plain dicts the stage sends."""


async def bare_loop(url: str, requests: list, concurrency: int, form: str = "typed") -> float:
    client = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=url, timeout=30_000))
    semaphore = asyncio.Semaphore(concurrency)
    configs = {}
    contents_of = CONTENT_FORMS[form]

    async def send(request):
        config = configs.get(request.stage)
        if config is None:
            config = configs[request.stage] = content_config(request)  # the stage's own config for the request
        contents = contents_of(request)
        async with semaphore:
            await client.aio.models.generate_content(model=request.model, contents=contents, config=config)

    started = time.perf_counter()
    await asyncio.gather(*(send(r) for r in requests))
    elapsed = time.perf_counter() - started
    await client.aio.aclose()
    return elapsed


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """CPU time of this process (every thread), of the calling thread, or of the waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


PIPELINE_SIDES = {
    "pipeline": "gemini-api",
    "pipeline-vertex": "vertex",
    "pipeline-vertex-unlabelled": "vertex-unlabelled",
}
"""The step's side of a measurement, by the surface it calls."""
VERTEX_PROJECT, VERTEX_LOCATION = "bench-project", "us-central1"


def gemini_resource(folder: Path, url: str, concurrency: int, surface: str = "gemini-api"):
    """The step's Gemini resource on `surface`; on Vertex AI with Application Default Credentials the local server
    refreshes (`local_credentials_file`, found through GOOGLE_APPLICATION_CREDENTIALS)."""
    from cost_pipeline.defs.gemini.resource import GeminiResource
    from cost_pipeline.gemini.local_endpoint import local_credentials_file

    endpoint: dict = {"base_url": url}
    if surface != "gemini-api":
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(local_credentials_file(folder, url))
        endpoint = {"vertexai": True, "project": VERTEX_PROJECT, "location": VERTEX_LOCATION, "vertex_base_url": url}
    return GeminiResource(
        endpoint=endpoint,
        cache={"database": str(folder / "bench.duckdb")},
        limits={
            "max_concurrency": concurrency,
            "requests_per_minute": 100_000_000,
            "tokens_per_minute": 10_000_000_000,
        },
    )


def resources_for(folder: Path) -> dict:
    from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
    from cost_pipeline.defs.resources import LandingResource
    from cost_pipeline.defs.warehouse import DuckDBWarehouse

    database = str(folder / "bench.duckdb")
    return {
        "io_manager": DuckDBPartitionIOManager(database=database),
        "landing": LandingResource(root=str(folder / "landing")),
        "warehouse": DuckDBWarehouse(database=database),
    }


def pipeline_child(
    folder: Path, url: str, concurrency: int, stage_config: dict | None = None, surface: str = "gemini-api"
) -> dict:
    """In a fresh process: the Gemini step end to end on `surface`, its wall and CPU seconds (its own, its thread's,
    its writer's). `vertex-unlabelled` is Vertex AI with the labels left out of every request, the baseline that
    prices them."""
    import dagster as dg

    if surface == "vertex-unlabelled":
        import cost_pipeline.gemini.client

        cost_pipeline.gemini.client.request_labels = lambda *args: None  # type: ignore[assignment]

    from cost_pipeline.defs.gemini import assets as turns
    from cost_pipeline.defs.ingest import assets as ingest
    from cost_pipeline.defs.resources import CostSettings

    assets = dg.load_assets_from_modules([turns])
    gemini = gemini_resource(folder, url, concurrency, surface)
    resources = {**resources_for(folder), "gemini": gemini, "costs": CostSettings()}
    run_config = {"ops": {"turns_through_gemini": {"config": stage_config}}} if stage_config else None
    started, cpu = time.perf_counter(), cpu_seconds()
    result = dg.materialize(
        [*assets, *dg.load_assets_from_modules([ingest])],
        partition_key=str(DAY),
        resources=resources,
        selection=assets,
        run_config=run_config,
    )
    seconds = time.perf_counter() - started
    assert result.success
    # The event loop runs in a thread of its own (gemini_step/loop_thread.py), which reports its CPU and run-queue wait.
    calls = next(
        m.metadata
        for m in result.asset_materializations_for_node("turns_through_gemini")
        if m.asset_key.path[-1] == "llm_calls"
    )
    return {
        "seconds": seconds,
        "cpu": cpu_seconds() - cpu,
        "loop_cpu": calls["event_loop_cpu_s"].value,
        "writer_cpu": cpu_seconds(resource.RUSAGE_CHILDREN),
        "waited": calls["event_loop_waited_s"].value,
    }


def bare_child(folder: Path, url: str, concurrency: int, form: str) -> dict:
    """In a fresh process that imports google-genai, the request and its SDK form only (no Dagster): the bare loop's
    wall and CPU seconds."""
    requests = pickle.loads((folder / "requests.pickle").read_bytes())
    cpu, (_, waited) = cpu_seconds(), thread_schedule()
    seconds = asyncio.run(bare_loop(url, requests, concurrency, form))  # the loop runs in this thread
    return {"seconds": seconds, "cpu": cpu_seconds() - cpu, "waited": thread_schedule()[1] - waited}


def run_child(
    mode: str, folder: Path, url: str, concurrency: int, wrapper: list[str] = (), stage_config: dict | None = None
) -> dict:
    """One side in a fresh process (under `wrapper`, say valgrind); its figures, and the wrapper's stderr."""
    config = ["--stage-config", json.dumps(stage_config)] if stage_config else []
    run = subprocess.run(
        [
            *wrapper,
            sys.executable,
            __file__,
            "--child",
            mode,
            "--folder",
            str(folder),
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            *config,
        ],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"the {mode} process failed:\n{run.stderr[-3000:]}")
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "stderr": run.stderr}


class Round(NamedTuple):
    """One round's figures: the stage's API calls, wall and CPU seconds (all threads, its own, its writer's) and its
    thread's run-queue wait, then the typed bare loop's, then the dict bare loop's; and which side ran first."""

    api_calls: int
    pipeline_s: float
    pipeline_cpu: float
    pipeline_loop_cpu: float
    writer_cpu: float
    pipeline_waited: float
    requests: int
    bare_s: float
    bare_cpu: float
    bare_waited: float
    dicts_s: float
    dicts_cpu: float
    first: str

    def ratio(self) -> float:
        """Against the typed bare loop: the goal's ratio."""
        return (self.api_calls / self.pipeline_s) / (self.requests / self.bare_s)

    def own_ratio(self) -> float:
        """Against the bare loop sending the stage's dict contents: the stage's own code alone."""
        return (self.api_calls / self.pipeline_s) / (self.requests / self.dicts_s)


def land_day(folder: Path, day_turns: int) -> None:
    """A fresh folder with a generated day of `day_turns` turns landed in its database."""
    import dagster as dg

    from cost_pipeline.defs.ingest import assets as ingest
    from cost_pipeline.ingest.synthetic import generate

    folder.mkdir()
    generate(folder / "landing", DAY, 1, day_turns, seed=7)
    dg.materialize(dg.load_assets_from_modules([ingest]), partition_key=str(DAY), resources=resources_for(folder))


def write_requests(stage_folder: Path, folder: Path, url: str, concurrency: int) -> list:
    """The API requests the stage run in `stage_folder` sent, pickled into `folder` for the bare loop."""
    requests = rebuild_requests(stage_folder / "bench.duckdb", gemini_resource(stage_folder, url, concurrency))
    (folder / "requests.pickle").write_bytes(pickle.dumps(requests))
    return requests


def rehearse(folder: Path, url: str, concurrency: int) -> list:
    """The requests a stage run of `folder`'s day sends, written for the bare loop before the stage runs there: from a
    run on a copy of the folder, removed afterwards (the stage's run that counts must not find its answers cached)."""
    rehearsal = folder.with_name(folder.name + "-rehearsal")
    shutil.copytree(folder, rehearsal)
    try:
        run_child("pipeline", rehearsal, url, concurrency)
        return write_requests(rehearsal, folder, url, concurrency)
    finally:
        shutil.rmtree(rehearsal)


def one_round(folder: Path, url: str, day_turns: int, concurrency: int, bare_first: bool) -> Round:
    """Land a fresh day; run the Gemini stage in a process of its own and the bare loop, sending the same requests, in
    another, in either order (the bare loop's requests are rebuilt from what a stage run stored: `rehearse` when the
    bare loop goes first)."""
    land_day(folder, day_turns)

    def pipeline_run() -> tuple[dict, int]:
        before = server_requests(url)
        figures = run_child("pipeline", folder, url, concurrency)
        return figures, server_requests(url) - before

    if bare_first:
        requests = rehearse(folder, url, concurrency)
        dicts = run_child("bare-dicts", folder, url, concurrency)
        bare = run_child("bare", folder, url, concurrency)
        pipeline, api_calls = pipeline_run()
    else:
        pipeline, api_calls = pipeline_run()
        requests = write_requests(folder, folder, url, concurrency)
        bare = run_child("bare", folder, url, concurrency)
        dicts = run_child("bare-dicts", folder, url, concurrency)
    return Round(
        api_calls,
        pipeline["seconds"],
        pipeline["cpu"],
        pipeline["loop_cpu"],
        pipeline["writer_cpu"],
        pipeline["waited"],
        len(requests),
        bare["seconds"],
        bare["cpu"],
        bare["waited"],
        dicts["seconds"],
        dicts["cpu"],
        "bare" if bare_first else "pipeline",
    )


VALGRIND_SLOWDOWN = 50
"""About how much slower Python runs under callgrind here: the step's intervals are stretched by it."""


def counted_instructions(mode: str, folder: Path, url: str, concurrency: int, turns: int, out: Path) -> int:
    """Instructions one side executed in its own process (callgrind's total; children such as the writer not traced)."""
    stage_config = None
    if mode in PIPELINE_SIDES:
        stage_config = {
            "checkpoint_every_s": 5.0 * VALGRIND_SLOWDOWN,
            "progress_every_s": 30.0 * VALGRIND_SLOWDOWN,
            "staged_chunk_rows": max(1, turns // 2),
        }
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
    stderr = run_child(mode, folder, url, concurrency, wrapper, stage_config)["stderr"]
    collected = re.search(r"Collected : (\d+)", stderr)
    if collected is None:
        raise SystemExit(f"callgrind reported no count for the {mode} side:\n{stderr[-2000:]}")
    return int(collected.group(1))


def instructions_at(folder: Path, url: str, day_turns: int, concurrency: int) -> dict:
    """Each side's instructions under callgrind: the step on the landed day (nothing cached), the bare loop on the
    requests its rehearsal sent. The step's API calls are counted from its own rows, not the server's counter: the
    other size runs against the same server at the same time."""
    import duckdb

    pipeline = counted_instructions("pipeline", folder, url, concurrency, day_turns, folder / "callgrind.pipeline")
    with duckdb.connect(str(folder / "bench.duckdb"), read_only=True) as connection:
        (api_calls,) = connection.execute("SELECT count(*) FROM llm_calls WHERE NOT cache_hit").fetchone()
    requests = len(pickle.loads((folder / "requests.pickle").read_bytes()))
    bare = counted_instructions("bare", folder, url, concurrency, day_turns, folder / "callgrind.bare")
    dicts = counted_instructions("bare-dicts", folder, url, concurrency, day_turns, folder / "callgrind.bare-dicts")
    return {
        "turns": day_turns,
        "api_calls": api_calls,
        "requests": requests,
        "pipeline": pipeline,
        "bare": bare,
        "bare-dicts": dicts,
    }


def instructions_main(day_turns: int, concurrency: int) -> None:
    """The instructions one more API call costs each side, from callgrind at two day sizes (run side by side)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server

    sizes = (max(1, day_turns // 4), day_turns)
    with tempfile.TemporaryDirectory() as folder, running_local_server(ServerConfig()) as url:
        for turns in sizes:
            land_day(Path(folder) / f"day{turns}", turns)
            rehearse(Path(folder) / f"day{turns}", url, concurrency)
        with ThreadPoolExecutor(len(sizes)) as pool:  # one valgrind per core
            small, large = pool.map(
                lambda turns: instructions_at(Path(folder) / f"day{turns}", url, turns, concurrency), sizes
            )
    calls = large["api_calls"] - small["api_calls"]
    if calls <= 0 or large["requests"] - small["requests"] != calls:
        raise SystemExit(f"the two sizes must differ in API calls, and both sides send the same ones: {small} {large}")
    pipeline, bare, dicts = ((large[side] - small[side]) / calls for side in ("pipeline", "bare", "bare-dicts"))
    print(
        f"{small['turns']:,} and {large['turns']:,} turns ({small['api_calls']:,} and {large['api_calls']:,} "
        "API calls), "
        f"concurrency {concurrency}, zero-latency local server, each side under callgrind in a fresh process"
    )
    print(
        f"instructions per API call, one more call (marginal between the sizes): pipeline {pipeline / 1e6:.2f} M, "
        f"bare generate_content loop {bare / 1e6:.2f} M; ratio bare / pipeline {bare / pipeline:.3f} "
        f"(the pipeline's own instructions per call: {(pipeline - bare) / bare:+.1%})"
    )
    print(
        f"against a bare loop sending the stage's dict contents, {dicts / 1e6:.2f} M: ratio {dicts / pipeline:.3f} "
        f"(the stage's own code per call: {(pipeline - dicts) / dicts:+.1%})"
    )
    record(
        "gemini_overhead.py --instructions",
        "Gemini stage overhead, instructions per API call",
        f"{pipeline / 1e6:.2f} M vs {bare / 1e6:.2f} M (typed loop): **{bare / pipeline:.3f}**; "
        f"vs {dicts / 1e6:.2f} M (dict loop): {dicts / pipeline:.3f}",
        ">= 0.95",
    )
    print(
        f"fixed instructions (start-up, imports, the step's setup and final write): pipeline "
        f"{(small['pipeline'] - small['api_calls'] * pipeline) / 1e9:.1f} G, "
        f"bare {(small['bare'] - small['requests'] * bare) / 1e9:.1f} G"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, help="turns in a day (default 39,000; with --instructions 2,400)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, alternating which side runs first; the median ratio counts"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per API call with callgrind (two sizes) instead of timing rounds",
    )
    parser.add_argument("--child", choices=[*PIPELINE_SIDES, "bare", "bare-dicts"], help=argparse.SUPPRESS)  # a side
    parser.add_argument("--stage-config", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child in PIPELINE_SIDES:
            surface = PIPELINE_SIDES[args.child]
            figures = pipeline_child(args.folder, args.url, args.concurrency, args.stage_config, surface)
        else:
            figures = bare_child(
                args.folder, args.url, args.concurrency, "dicts" if args.child == "bare-dicts" else "typed"
            )
        print(json.dumps(figures))
        return
    if args.instructions:
        instructions_main(args.turns or 2_400, args.concurrency)
        return
    args.turns = args.turns or 39_000
    from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server

    rounds = []
    with tempfile.TemporaryDirectory() as folder, running_local_server(ServerConfig()) as url:
        for number in range(args.rounds):
            rounds.append(
                one_round(
                    Path(folder) / f"round{number}", url, args.turns, args.concurrency, bare_first=number % 2 == 1
                )
            )

    print(
        f"{args.turns:,} turns, concurrency {args.concurrency}, zero-latency local server in its own process, "
        f"{args.rounds} rounds alternating which side runs first, each side in a fresh process"
    )
    ratios, own = [r.ratio() for r in rounds], [r.own_ratio() for r in rounds]
    for number, r in enumerate(rounds, 1):
        print(
            f"round {number} ({r.first} first): pipeline (Dagster step end to end) {r.api_calls:,} API calls "
            f"in {r.pipeline_s:.1f} s = "
            f"{r.api_calls / r.pipeline_s:,.0f} calls/s, {args.turns / r.pipeline_s:,.0f} turns/s; bare "
            "generate_content "
            f"loop {r.requests:,} calls in {r.bare_s:.1f} s = {r.requests / r.bare_s:,.0f} calls/s; "
            f"ratio {r.ratio():.3f}; "
            f"CPU per API call {r.pipeline_cpu / r.api_calls * 1000:.2f} ms (the step's own thread "
            f"{r.pipeline_loop_cpu / r.api_calls * 1000:.2f}, its writer process "
            f"{r.writer_cpu / r.api_calls * 1000:.2f} more) vs {r.bare_cpu / r.requests * 1000:.2f} ms; "
            "run-queue wait of "
            f"the loop's thread {r.pipeline_waited:.2f} s vs {r.bare_waited:.2f} s; bare loop with dict contents "
            f"{r.requests / r.dicts_s:,.0f} calls/s, {r.dicts_cpu / r.requests * 1000:.2f} ms CPU per call, "
            f"ratio {r.own_ratio():.3f}"
        )
    print(
        f"throughput ratio pipeline / bare: {statistics.median(ratios):.2f} median of {len(ratios)} rounds "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}; goal >= 0.95)"
    )
    print(
        f"throughput ratio pipeline / bare loop sending dict contents as the stage does (the stage's own code): "
        f"{statistics.median(own):.2f} median (min {min(own):.2f}, max {max(own):.2f})"
    )
    record(
        "gemini_overhead.py",
        f"Gemini stage overhead: {args.turns:,} turns, concurrency {args.concurrency}, pipeline vs a bare "
        f"`generate_content` loop (median of {args.rounds} rounds)",
        f"**{statistics.median(ratios):.2f}** against the typed loop; {statistics.median(own):.2f} against a loop "
        "sending the stage's dict contents",
        ">= 0.95",
    )


if __name__ == "__main__":
    main()
