"""The Gemini step's writer process: checkpoints and staged chunks written by a child, off the event loop's GIL.

Why. A checkpoint parses spool lines, prices attempts and builds frames; staging a chunk
prices its calls and writes Parquet. Both are Python that holds the GIL, and the step's
event loop is CPU-bound on a fast endpoint: in a thread of the step's process they would
stall the loop for as long as they run. A child does both on another core; the loop
pickles a chunk's rows and moves on.

Guarantees. The child runs exactly the code the step would run itself (`load_spools`
and `ResponseCache.write` for a checkpoint, `staged_chunk.stage_chunk` for a chunk), one
request at a time, so what is durable, and when, is unchanged. It reads requests on its
stdin and exits at EOF: when the step's process ends, however it ends (kill -9
included), the pipe closes, the child finishes the request it is on and stops; it never
starts another. A child that cannot start, or dies, raises `WriterGone`, and the caller
does that work itself (`checkpoints.py`, `staged_day.py`); a request that failed in the
child raises `WriteFailed` with what it did before failing. No Dagster here.

    python -m cost_pipeline.gemini_step.writer_process    (started by `WriterProcess.start`, never by hand)
"""

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import cost_pipeline
from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini_step.process_memory import peak_rss_mb
from cost_pipeline.gemini_step.staged_chunk import stage_chunk
from cost_pipeline.money.ledger import load_spools
from cost_pipeline.money.pricing import PriceBook
from cost_pipeline.storage.arrow_memory import use_system_allocator

MODULE = "cost_pipeline.gemini_step.writer_process"
CHECKPOINT, STAGE = "checkpoint", "stage"


class WriterGone(Exception):
    """The child is not there to write (it did not start, or it died): nothing is known to be written."""


class WriteFailed(Exception):
    """The child ran the request and it failed (say the file stayed locked); what it did write stays written."""

    def __init__(self, message: str, spent: Decimal, warnings: list[str]):
        super().__init__(message)
        self.spent, self.warnings = spent, warnings


class WriterProcess:
    """A child process that writes for one step; its calls block (make them from worker threads)."""

    def __init__(self, database: str | Path, book: PriceBook):
        source = str(Path(cost_pipeline.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            if self._child.stdin is None or self._child.stdout is None:
                raise OSError("no pipes to the writer process")
            self._requests, self._replies = self._child.stdin, self._child.stdout
            # A fresh book: the prices and overrides travel, not the parent's memo.
            self._send((str(database), book.overrides, book.override_source))
        except OSError as err:
            raise WriterGone(f"writer process did not start: {err}") from None
        self._lock = threading.Lock()
        self.closed = False
        self.peak_rss_mb: float | None = None  # the child's own peak, read as it is closed

    @classmethod
    def start(cls, database: str | Path, book: PriceBook, log: Callable[[str], None]) -> "WriterProcess | None":
        """A writer, or None (logged) when none can start: the step then writes everything itself."""
        try:
            return cls(database, book)
        except WriterGone as gone:
            log(f"{gone}; this step writes its checkpoints and staging itself")
            return None

    def checkpoint(self, entries: list[dict], spools: list[Path]) -> tuple[int, int, Decimal, list[str]]:
        """Load `spools` into the ledger, then write `entries` to the cache: (entries written, attempts added,
        what those attempts were billed, warnings to log)."""
        (written, added), spent, warnings = self._request((CHECKPOINT, entries, [str(path) for path in spools]))
        return written, added, spent, warnings

    def stage(self, folder: Path, number: int, rows: bytes) -> dict[str, int]:
        """Stage chunk `number` (its rows pickled) in `folder`; rows staged per table."""
        staged, _, _ = self._request((STAGE, str(folder), number, rows))
        return staged

    def close(self, timeout_s: float = 60.0) -> None:
        """End the child after the request it is on; waits for it (kills it past `timeout_s`). Idempotent.

        Sets `peak_rss_mb` to the child's own peak (`process_memory.py`), read while it still runs.
        """
        if self.closed:
            return
        self.closed = True
        self.peak_rss_mb = peak_rss_mb(self._child.pid)
        try:
            self._requests.close()
        except OSError:
            pass
        try:
            self._child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._replies.close()

    def _request(self, message: tuple):
        with self._lock:
            if self.closed:
                raise WriterGone("writer process closed")
            try:
                self._send(message)
                reply = pickle.load(self._replies)
            except (OSError, EOFError, pickle.UnpicklingError) as err:
                raise WriterGone(f"writer process gone ({type(err).__name__}: {err})") from None
        status, result, spent, warnings = reply
        if status == "failed":
            raise WriteFailed(result, spent, warnings)
        return result, spent, warnings

    def _send(self, message) -> None:
        pickle.dump(message, self._requests, protocol=pickle.HIGHEST_PROTOCOL)
        self._requests.flush()


def serve(requests, replies) -> None:
    """The child's loop: one reply per request, until the parent closes the pipe."""
    try:
        database, overrides, override_source = pickle.load(requests)
    except EOFError:  # the parent ended before it asked anything
        return
    book = PriceBook(overrides, override_source)
    cache = ResponseCache(database)
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        warnings: list[str] = []
        spent = [Decimal(0)]

        def spend(usd: Decimal) -> None:
            spent[0] += usd

        try:
            if request[0] == CHECKPOINT:
                _, entries, spools = request
                added = sum(
                    load_spools(database, book, only=Path(path), log=warnings.append, on_spend=spend) for path in spools
                )
                result: object = (cache.write(entries), added)
            elif request[0] == STAGE:
                _, folder, number, rows = request
                result = stage_chunk(Path(folder), number, book, *pickle.loads(rows))
            else:
                raise ValueError(f"unknown request {request[0]!r}")
            reply: tuple = ("written", result, spent[0], warnings)
        except Exception as err:
            reply = ("failed", f"{type(err).__name__}: {err}", spent[0], warnings)
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main() -> None:
    use_system_allocator()  # as the step does: mimalloc keeps tens of MB resident after each chunk's Arrow buffers
    # The replies get a private copy of stdout; whatever a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
