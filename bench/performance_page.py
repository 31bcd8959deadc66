"""Write `docs/performance.md`, the table of every bench's latest figure, from `docs/performance.json`.

`make bench` runs the benches (each records its row) and then this; earlier figures live in
the history of those two files.
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
HEADER = """# Performance

The latest figure of each benchmark in `bench/`, written by `make bench` from
`docs/performance.json` (each bench records its own row). `test_bench.py` runs every bench
at a tiny size, so none can rot. On 2 cores one run is one sample: earlier runs are in the
history of `docs/performance.json`.

| benchmark | figure | goal | date | commit | machine |
|---|---|---|---|---|---|
"""


def page(rows: dict) -> str:
    lines = [
        f"| {row['what']} (`{bench}`) | {row['figure']} | {row['goal']} | {row['date']} | {row['commit']} "
        f"| {row['machine']} |"
        for bench, row in rows.items()
    ]
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    results = Path(argv[0]) if argv else REPO / "docs" / "performance.json"
    (REPO / "docs" / "performance.md").write_text(page(json.loads(results.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
