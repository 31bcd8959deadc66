"""Checkpoints of what a running day has paid for: answers to the response cache, attempts to the ledger.

Every `every_s` seconds while the calls run, the new cache entries and the finished
part of the attempt spool are written in two short transactions by the step's writer
process (`writer_process.py`; in a worker thread of this process when there is none),
so the event loop keeps calling Gemini, without even sharing its GIL, and another run's
writer waits seconds, not a whole day, for the file lock. A run killed at any point therefore loses at most the
last interval of answers: its re-run finds the rest in the cache and pays only for the
calls it had not made. Attempts lose nothing either way (the spool is durable line by
line; see `ledger.py`). A checkpoint that fails (say the file stayed locked) is logged
and retried by the next one and at the end; it never fails the run. No Dagster here.
"""

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini_step.writer_process import WriteFailed, WriterGone, WriterProcess
from cost_pipeline.money.ledger import AttemptSpool, load_spools
from cost_pipeline.money.pricing import PriceBook


class Checkpoints:
    """Writes what a running day has paid for (ledger attempts first, then cache entries), every `every_s`.

    Seven parameters: the collaborators a checkpoint writes to or through, owned by the step.
    """

    def __init__(
        self,
        database: str | Path,
        cache: ResponseCache,
        spool: AttemptSpool,
        book: PriceBook,
        log: Callable[[str], None],
        every_s: float,
        writer: WriterProcess | None = None,
    ):
        self.database, self.cache, self.spool, self.book = database, cache, spool, book
        self.log, self.every_s = log, every_s
        self._writer = writer
        """Where periodic checkpoints are written (None: here); its owner closes it."""
        self._unloaded: list[Path] = []
        self._unwritten: list[dict] = []
        self._stopped = asyncio.Event()
        self.cache_entries = self.attempts = self.count = 0
        self.spent = Decimal(0)
        """What the attempts checkpointed so far were billed (a progress figure; the ledger is the record)."""

    async def run_periodically(self) -> None:
        """Checkpoint every `every_s` seconds until `stop`; a checkpoint under way always completes."""
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), self.every_s)
            except TimeoutError:
                await self.checkpoint()

    def stop(self) -> None:
        self._stopped.set()

    async def checkpoint(self) -> bool:
        """Hand the new entries and the finished spool to a worker thread (taken here, in the loop's thread).

        True when everything recorded before the call is now in DuckDB; False when it was deferred.
        """
        entries = self._unwritten + self.cache.take_new()
        spools = [*self._unloaded, *([self.spool.rotate()] if self.spool.written else [])]
        if not entries and not spools:
            return True
        self._unwritten, self._unloaded = [], []
        try:
            written, added = await asyncio.to_thread(self._write_somewhere, entries, spools)
        except Exception as err:  # the end of the run writes whatever a checkpoint could not
            self.log(f"checkpoint deferred ({type(err).__name__}: {err}); the next one retries")
            self._unwritten, self._unloaded = entries + self._unwritten, spools + self._unloaded
            return False
        self.cache_entries += written
        self.attempts += added
        self.count += 1
        return True

    def finish(self) -> tuple[int, int]:
        """After the calls: the spool's last part to the ledger first (money), then the last answers. Blocking.

        Written from this process: the end of a run does not depend on the writer process.
        """
        self.spool.close()
        entries, spools = self._unwritten + self.cache.take_new(), [*self._unloaded, self.spool.path]
        self._unwritten, self._unloaded = [], []
        try:
            added = sum(
                load_spools(self.database, self.book, only=path, log=self.log, on_spend=self._spend) for path in spools
            )
        finally:  # answers are cached even when the ledger must wait (its spool stays on disk for the next loader)
            written = self.cache.write(entries)
        self.attempts += added
        self.cache_entries += written
        return self.attempts, self.cache_entries

    def _write_somewhere(self, entries: list[dict], spools: list[Path]) -> tuple[int, int]:
        """In the child process while it is there, else here; raises when the checkpoint failed."""
        if self._writer is not None:
            try:
                written, added, spent, warnings = self._writer.checkpoint(entries, spools)
            except WriterGone as gone:
                self.log(f"{gone}; checkpoints are written from this process from now on")
                self._writer = None
            except WriteFailed as failed:
                self._report(failed.spent, failed.warnings)
                raise
            else:
                self._report(spent, warnings)
                return written, added
        return self._write(entries, spools)

    def _report(self, spent: Decimal, warnings: list[str]) -> None:
        self._spend(spent)
        for warning in warnings:
            self.log(warning)

    def _write(self, entries: list[dict], spools: list[Path]) -> tuple[int, int]:
        added = sum(
            load_spools(self.database, self.book, only=path, log=self.log, on_spend=self._spend) for path in spools
        )
        return self.cache.write(entries), added

    def _spend(self, usd: Decimal) -> None:
        self.spent += usd
