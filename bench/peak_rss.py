"""Peak resident memory of a day's partition: ingest of 1M turns, and the Gemini stage.

Each stage runs as a real Dagster materialization in a fresh child process (so one
stage's memory does not hide another's) against the shipped zero-latency model
server, and the child reports its own peak RSS. Running the Gemini stage on 1M turns
takes about an hour on two cores; by default it runs on fewer turns and prints the
memory per turn, which is what scales.

    python bench/peak_rss.py [--ingest-turns 1000000] [--gemini-turns 50000]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

DAY = date(2026, 11, 1)

CHILD = r"""
import json, resource, sys
from pathlib import Path
import dagster as dg
from cost_pipeline.assets import ingest, turns
from cost_pipeline.costs import rollups
from cost_pipeline.llm.client import GeminiResource
from cost_pipeline.resources import CostSettings, LandingResource
from cost_pipeline.storage.io_manager import DuckDBPartitionIOManager
from cost_pipeline.storage.warehouse import DuckDBWarehouse

folder, stage, day, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
database = str(folder / "bench.duckdb")
resources = {"io_manager": DuckDBPartitionIOManager(database=database), "warehouse": DuckDBWarehouse(database=database),
             "landing": LandingResource(root=str(folder / "landing")), "costs": CostSettings(),
             "gemini": GeminiResource(base_url=url, cache_database=database, max_concurrency=64,
                                      requests_per_minute=100_000_000, tokens_per_minute=10_000_000_000)}
everything = dg.load_assets_from_modules([ingest, turns, rollups])
selection = {"ingest": ["raw_turns", "quarantined_turns"], "gemini": ["cleaned_turns", "function_calls", "llm_calls"]}[stage]
result = dg.materialize(everything, partition_key=day, resources=resources, selection=selection)
assert result.success
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_stage(folder: Path, stage: str, url: str) -> tuple[float, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), stage, DAY.isoformat(), url],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"], time.perf_counter() - started


def main() -> None:
    from cost_pipeline.llm.local_server import ServerConfig, running_local_server
    from cost_pipeline.synthetic import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-turns", type=int, default=1_000_000)
    parser.add_argument("--gemini-turns", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_local_server(ServerConfig()) as url:
        for stage, turns in (("ingest", args.ingest_turns), ("gemini", args.gemini_turns)):
            folder = Path(tmp) / stage
            generate(folder / "landing", DAY, 1, turns, seed=7)
            if stage == "gemini":
                run_stage(folder, "ingest", url)
            peak, seconds = run_stage(folder, stage, url)
            print(f"{stage:<7} {turns:>9,} turns: peak RSS {peak:,.0f} MB ({peak * 1024 / turns:.1f} KB/turn), {seconds:.0f} s")


if __name__ == "__main__":
    main()
