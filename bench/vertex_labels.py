"""What Vertex AI's request labels cost the Gemini step: instructions per API call, labels on and off.

Every Vertex AI request carries the pipeline's labels (`gemini/labels.py`), so Cloud Billing can
attribute each line. This counts, under valgrind's callgrind and in a fresh process per side,
the instructions the Gemini step spends per API call (the marginal cost between a quarter and
the whole of a day, as `gemini_overhead.py --instructions` does, start-up left out) on three
surfaces of the same zero-latency local server, through the real google-genai client:
the Gemini API (no labels), Vertex AI with labels, and Vertex AI with the labels left out of
every request. Instructions, not seconds: this VM's speed drifts by more than the 1% goal.
The throughput ratio is the inverse of the instructions ratio (the step is CPU-bound here).

    python bench/vertex_labels.py [--turns 2400] [--concurrency 64]
"""

import argparse
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gemini_overhead import counted_instructions, land_day
from results import record

SIDES = {"pipeline": "Gemini API", "pipeline-vertex-unlabelled": "Vertex AI, no labels", "pipeline-vertex": "Vertex AI"}


def per_call(folder: Path, url: str, turns: int, concurrency: int) -> dict[str, tuple[int, int]]:
    """(instructions, API calls) of each side on a day of `turns` turns, each side on a fresh copy of the landed day
    (nothing cached), the calls counted from the side's own rows."""
    import duckdb

    land_day(folder / "landed", turns)
    figures = {}
    for side in SIDES:
        copy = folder / side
        shutil.copytree(folder / "landed", copy)
        instructions = counted_instructions(side, copy, url, concurrency, turns, copy / "callgrind.out")
        with duckdb.connect(str(copy / "bench.duckdb"), read_only=True) as connection:
            (calls,) = connection.execute("SELECT count(*) FROM llm_attempts").fetchone()
        figures[side] = (instructions, calls)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2_400, help="turns in the larger day (the smaller is a quarter)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("this bench needs valgrind (Debian: apt-get install valgrind)")
    from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server

    sizes = (max(1, args.turns // 4), args.turns)
    with tempfile.TemporaryDirectory() as folder, running_local_server(ServerConfig()) as url:
        for turns in sizes:
            (Path(folder) / f"day{turns}").mkdir()
        with ThreadPoolExecutor(len(sizes)) as pool:  # one valgrind per core
            small, large = pool.map(
                lambda turns: per_call(Path(folder) / f"day{turns}", url, turns, args.concurrency), sizes
            )
    marginal = {}
    for side in SIDES:
        calls = large[side][1] - small[side][1]
        if calls <= 0:
            raise SystemExit(f"the two sizes must differ in API calls: {small} {large}")
        marginal[side] = (large[side][0] - small[side][0]) / calls
    print(
        f"{sizes[0]:,} and {sizes[1]:,} turns, concurrency {args.concurrency}, zero-latency local server, "
        "each side under callgrind in a fresh process; instructions per API call (marginal between the sizes):"
    )
    for side, name in SIDES.items():
        print(f"  {name:<22} {marginal[side] / 1e6:7.3f} M  ({large[side][1]:,} API calls at {sizes[1]:,} turns)")
    labelled, unlabelled = marginal["pipeline-vertex"], marginal["pipeline-vertex-unlabelled"]
    ratio = unlabelled / labelled
    print(
        f"labels cost {(labelled - unlabelled) / unlabelled:+.2%} instructions per call: "
        f"throughput ratio labelled / unlabelled {ratio:.4f} (goal: labels cost < 1%, ratio > 0.99)"
    )
    print(f"Vertex AI (labelled) vs the Gemini API: {marginal['pipeline'] / labelled:.3f}")
    record(
        "vertex_labels.py",
        "Vertex AI request labels, Gemini step throughput labelled / unlabelled (instructions per API call)",
        f"{labelled / 1e6:.3f} M vs {unlabelled / 1e6:.3f} M: **{ratio:.4f}**",
        "> 0.99 (labels cost < 1%)",
    )


if __name__ == "__main__":
    main()
