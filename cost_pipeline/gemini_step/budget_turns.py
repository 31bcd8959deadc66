"""Runs that spend against one shared limit take turns, so no limit is passed by what another run spent meanwhile.

Why: a run's budget knows the ledger's spend as of its start plus its own attempts. Two
runs at once against one day limit (two runs of a day) or one evaluation limit (a backfill:
every day has every evaluation) would each see the other's spend only afterwards, and
together pass the limit by up to a whole run. A shared reservation store across processes
would let them interleave; a turn is simpler and exact: a run whose limits another run
also spends against waits for it, then reads the ledger, which then holds every attempt of
the runs before it (their spools are loaded when they end, or by the next run if they were
killed). Only the Gemini phase of runs that have such limits takes turns: a `run` limit
alone, or no limits, never waits.

How: an exclusive `flock` on a file beside the DuckDB file, one per scope: every day at
once when there are evaluation limits, else one per data day when there is a day limit.
The kernel frees it when its holder dies, so a killed run never blocks the next one. On the
lake, whose runs share no disk, the turn is a PostgreSQL advisory lock in its catalog, which
the server frees when its holder's session ends. No Dagster here.
"""

import fcntl
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cost_pipeline.money.budgets import Limits
from cost_pipeline.storage.lake import advisory_lock, catalog_dsn, is_lake


def turn_scope(limits: Limits, day: str) -> str | None:
    """Which runs share a limit with a run of `day`: `all` (evaluation limits), `day-<day>`, or None (no turn)."""
    if limits.evaluation_month or limits.evaluation:
        return "all"
    if limits.day is not None:
        return f"day-{day}"
    return None


@contextmanager
def spending_turn(
    database: str | Path,
    scope: str | None,
    holder: str,
    log: Callable[[str], None],
    poll_s: float = 1.0,
    say_every_s: float = 60.0,
) -> Iterator[float]:
    """Hold the turn of `scope` (waiting for it as long as it takes); yields the seconds waited (0.0: no wait)."""
    if scope is None:
        yield 0.0
        return
    if is_lake(database):
        started = time.monotonic()
        with advisory_lock(catalog_dsn(str(database)), f"cost_pipeline spending {scope}", math.inf, log):
            yield time.monotonic() - started
        return
    path = Path(f"{database}.spending-{scope}.lock")
    started, said = time.monotonic(), None
    with path.open("a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                said = said or now - say_every_s  # the first refusal is said at once
                if now - said >= say_every_s:
                    handle.seek(0)
                    log(
                        f"waiting for run {handle.read().strip() or '(unknown)'} to finish spending against the same "
                        f"limits ({path.name}): runs with shared limits take turns"
                    )
                    said = now
                time.sleep(poll_s)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
            yield 0.0 if said is None else time.monotonic() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
