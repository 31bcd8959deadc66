"""Where a bench's headline figure goes: `docs/performance.json`, from which `make bench` writes the table.

A bench calls `record` with its figure and goal; the row is written only when `BENCH_RESULTS`
names the results file (`make bench` sets it), so a bench run by hand or by the tests at a
tiny size never changes the page. Each row carries the date, commit and machine of its run.
"""

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

RESULTS_ENV = "BENCH_RESULTS"
REPO = Path(__file__).parents[1]


def record(bench: str, what: str, figure: str, goal: str) -> None:
    """Set `bench`'s row (what it measures, the figure, the goal) in the results file, if one is named."""
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    path = Path(target)
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[bench] = {
        "what": what,
        "figure": figure,
        "goal": goal,
        "date": datetime.now(timezone.utc).date().isoformat(),
        "commit": _commit(),
        "machine": machine(),
    }
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


def machine() -> str:
    """Cores, memory and processor: enough to tell two machines' figures apart."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory:.0f} GiB, {cpu}"


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    return (result.stdout.strip() or "unknown") + ("+changes" if dirty else "")
