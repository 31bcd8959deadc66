"""Checkpoint writes in a child process, so the Gemini step's event loop keeps its process's GIL.

Why. A checkpoint parses spool lines, prices attempts and builds frames: Python that holds
the GIL. Run in a worker thread of the step's process, it stalled the event loop for as
long: on bench/gemini_overhead.py's 20,000-turn day the loop's thread sat idle 1.8 s of a
65 s calls phase with checkpoints every 5 s, and 0.2 s with none. A child process does the
same work on another core.

Guarantees. The child runs exactly the writes a thread would (`load_spools` of finished
spool files, then `ResponseCache.write`), one request at a time, each in DuckDB's own
short transactions, so what is durable, and when, is unchanged. It reads requests on its
stdin and exits at EOF: when the step's process ends, however it ends (kill -9 included),
the pipe closes, the child finishes the transaction it is in and stops; it never starts
another. A child that cannot start, or dies, raises `WriterGone` to the caller, which
writes in its own process instead (`checkpoints.py`). No Dagster here.

    python -m cost_pipeline.costs.checkpoint_process    (started by `CheckpointProcess`, never by hand)
"""

import os
import pickle
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import cost_pipeline
from cost_pipeline.costs.ledger import load_spools
from cost_pipeline.costs.pricing import PriceBook
from cost_pipeline.llm.cache import ResponseCache

MODULE = "cost_pipeline.costs.checkpoint_process"


class WriterGone(Exception):
    """The child is not there to write (it did not start, or it died): nothing is known to be written."""


class CheckpointFailed(Exception):
    """The child ran the checkpoint and it failed (say the file stayed locked); what it did write stays written."""

    def __init__(self, message: str, spent: Decimal, warnings: list[str]):
        super().__init__(message)
        self.spent, self.warnings = spent, warnings


class CheckpointProcess:
    """A child process that writes checkpoints for one step; `write` blocks (call it from a worker thread)."""

    def __init__(self, database: str | Path, book: PriceBook):
        source = str(Path(cost_pipeline.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
        try:
            self._child = subprocess.Popen([sys.executable, "-m", MODULE], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=env)
            # A fresh book: the prices and overrides travel, not the parent's memo.
            self._send((str(database), book.overrides, book.override_source))
        except OSError as err:
            raise WriterGone(f"checkpoint process did not start: {err}") from None
        self._lock = threading.Lock()

    def write(self, entries: list[dict], spools: list[Path]) -> tuple[int, int, Decimal, list[str]]:
        """Load `spools` into the ledger, then write `entries` to the cache: (entries written, attempts added,
        what those attempts were billed, warnings to log)."""
        with self._lock:
            try:
                self._send((entries, [str(path) for path in spools]))
                reply = pickle.load(self._child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as err:
                raise WriterGone(f"checkpoint process gone ({type(err).__name__}: {err})") from None
        if reply[0] == "failed":
            _, message, spent, warnings = reply
            raise CheckpointFailed(message, spent, warnings)
        _, written, added, spent, warnings = reply
        return written, added, spent, warnings

    def close(self, timeout_s: float = 60.0) -> None:
        """End the child after the request it is on; waits for it (kills it past `timeout_s`)."""
        try:
            self._child.stdin.close()
        except OSError:
            pass
        try:
            self._child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._child.stdout.close()

    def _send(self, message) -> None:
        pickle.dump(message, self._child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._child.stdin.flush()


def serve(requests, replies) -> None:
    """The child's loop: one reply per request, until the parent closes the pipe."""
    database, overrides, override_source = pickle.load(requests)
    book = PriceBook(overrides, override_source)
    cache = ResponseCache(database)
    while True:
        try:
            entries, spools = pickle.load(requests)
        except EOFError:
            return
        warnings: list[str] = []
        spent = [Decimal(0)]

        def spend(usd: Decimal) -> None:
            spent[0] += usd

        try:
            added = sum(load_spools(database, book, only=Path(path), log=warnings.append, on_spend=spend)
                        for path in spools)
            reply = ("written", cache.write(entries), added, spent[0], warnings)
        except Exception as err:
            reply = ("failed", f"{type(err).__name__}: {err}", spent[0], warnings)
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main() -> None:
    # The replies get a private copy of stdout; whatever a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
