"""Peak resident memory of a whole day's graph (ingest, Gemini stage, rollup, checks) at several sizes.

Each size runs as one real Dagster materialization of the daily graph in a fresh child
process (the project's in-process executor runs the whole graph in one process, so its
peak is the step that needs most), against the shipped zero-latency model server, and
the child reports its own peak RSS and the Gemini step reports that of its writer process
(`gemini_step/writer_process.py`, in the `writer_peak_rss_mb` metadata of llm_calls): the sum of
both peaks, an upper bound of what the day held at once. Each is the process's own peak
(VmHWM, `process_memory.py`): getrusage's ru_maxrss would count in the writer the pages
of the step that started it. The growth per 1,000 turns is the slope between the
smallest and largest size: what a day costs in memory beyond the process's fixed size.

Goal: under 1.0 GB at 200,000 turns and under 0.5 MB of growth per 1,000 turns, so a
1,000,000-turn day stays under 1.5 GB.

    python bench/peak_rss.py [--sizes 50000,100000,200000] [--staged-chunk-rows N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from results import record  # noqa: E402

os.environ.setdefault(
    "COST_PIPELINE_START", "2026-01-01"
)  # keeps the fixed bench days inside the partitions (children inherit it)

DAY = date(2026, 11, 1)

CHILD = r"""
import json, sys
from pathlib import Path

import dagster as dg
from cost_pipeline.defs.ingest import assets as ingest
from cost_pipeline.defs.gemini import assets as turns
from cost_pipeline.defs.costs import checks
from cost_pipeline.defs.costs import rollups
from cost_pipeline.defs.gemini.resource import GeminiResource
from cost_pipeline.gemini_step.process_memory import peak_rss_mb
from cost_pipeline.defs.resources import CostSettings, LandingResource
from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.warehouse import DuckDBWarehouse

folder, day, url, chunk_rows = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
stage_config = {"staged_chunk_rows": int(chunk_rows)} if chunk_rows != "default" else {}
database = str(folder / "bench.duckdb")
resources = {"io_manager": DuckDBPartitionIOManager(database=database), "warehouse": DuckDBWarehouse(database=database),
             "landing": LandingResource(root=str(folder / "landing")), "costs": CostSettings(),
             "gemini": GeminiResource(endpoint={"base_url": url}, cache={"database": database},
                                      limits={"max_concurrency": 64, "requests_per_minute": 100_000_000,
                                              "tokens_per_minute": 10_000_000_000})}
daily = ["raw_turns", "quarantined_turns", "cleaned_turns", "function_calls", "llm_calls", "daily_cost_rollup"]
definitions = [*dg.load_assets_from_modules([ingest, turns, rollups]), *dg.load_asset_checks_from_modules([checks])]
result = dg.materialize(definitions, partition_key=day, resources=resources, selection=daily,
                        run_config={"ops": {"turns_through_gemini": {"config": stage_config}}})
assert result.success
calls = next(event.materialization.metadata for event in result.get_asset_materialization_events()
             if event.materialization.asset_key.to_user_string() == "llm_calls")
writer = calls.get("writer_peak_rss_mb")  # absent when the day fit one staged chunk and started no writer
print(json.dumps({"step_mb": peak_rss_mb(), "writer_process_mb": writer.value if writer else 0.0}))
"""


def run_day(folder: Path, url: str, chunk_rows: int | None) -> tuple[dict, float]:
    """Peak RSS (MB) of one child process running the whole daily graph and of its writer process, and wall time (s)."""
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), DAY.isoformat(), url, str(chunk_rows or "default")],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"the daily graph failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server
    from cost_pipeline.ingest.synthetic import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,100000,200000", help="Turns per day, comma-separated, at least two.")
    parser.add_argument(
        "--staged-chunk-rows",
        type=int,
        default=None,
        help="The Gemini step's staged_chunk_rows (default: the step's own); a day larger than one "
        "chunk starts a writer process.",
    )
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if len(sizes) < 2:
        parser.error("give at least two sizes, so the growth per 1,000 turns can be measured")
    peaks, writer_peaks = {}, {}
    with tempfile.TemporaryDirectory() as tmp, running_local_server(ServerConfig()) as url:
        for turns in sizes:
            folder = Path(tmp) / str(turns)
            generate(folder / "landing", DAY, 1, turns, seed=7)
            peak, seconds = run_day(folder, url, args.staged_chunk_rows)
            peaks[turns] = peak["step_mb"] + peak["writer_process_mb"]
            writer_peaks[turns] = peak["writer_process_mb"]
            print(
                f"{turns:>9,} turns: peak RSS {peaks[turns]:,.0f} MB for the whole daily graph "
                f"({peak['step_mb']:,.0f} MB "
                f"its process + {peak['writer_process_mb']:,.0f} MB its writer process), {seconds:.0f} s"
            )
    growth = (peaks[sizes[-1]] - peaks[sizes[0]]) / ((sizes[-1] - sizes[0]) / 1000)
    projected = peaks[sizes[-1]] + growth * (1_000_000 - sizes[-1]) / 1000
    print(f"growth {growth:.3f} MB per 1,000 turns (goal < 0.5); projected 1,000,000 turns: {projected:,.0f} MB")
    figures = {
        "peak_rss_mb": {str(k): round(v, 1) for k, v in peaks.items()},
        "writer_process_mb": {str(k): round(v, 1) for k, v in writer_peaks.items()},
        "growth_mb_per_1k_turns": round(growth, 4),
        "projected_1m_mb": round(projected),
    }
    record(
        "peak_rss.py",
        "peak RSS of the daily graph, step plus writer process",
        f"**{' / '.join(f'{peaks[size]:,.0f}' for size in sizes)} MB** at "
        f"{' / '.join(f'{size:,}' for size in sizes)} turns; growth {growth:.2f} MB per 1,000 turns",
        "< 1.0 GB; < 0.5 MB",
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
