"""Peak resident memory of a process: the peak of the program it runs now, not of the one that started it.

Why not `resource.getrusage(...).ru_maxrss`: Linux carries that figure across fork and
exec, so a child started by a process holding hundreds of megabytes (as the Gemini step
starts its writer process) reports at least that, whatever it uses itself. `VmHWM` in
/proc/<pid>/status is the high-water mark of the process's current address space, which
exec replaces: the program's own peak. Linux only; elsewhere None. No Dagster here.
"""

from pathlib import Path


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """The peak resident set (MB) of process `pid` since it last exec'd; None when unknown (no /proc, process gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None  # a zombie has no address space left to measure
