"""Checkpoints written by a child process: the same rows as from a thread, and no loss when the child or the parent dies."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import duckdb
import pytest

from cost_pipeline.costs.checkpoint_process import CheckpointProcess, WriterGone
from cost_pipeline.costs.checkpoints import Checkpoints
from cost_pipeline.costs.ledger import AttemptSpool, spool_folder
from cost_pipeline.costs.pricing import PriceBook
from cost_pipeline.llm.attempts import ACCEPTED, Attempt
from cost_pipeline.llm.cache import ResponseCache
from cost_pipeline.llm.usage import Usage

MODEL = "gemini-2.5-flash-lite"


def answered(spool: AttemptSpool, cache: ResponseCache, number: int) -> None:
    """One billed attempt in the spool and its answer in the cache, as a session records them."""
    attempt = Attempt(uuid.uuid4().hex, f"call-{number}", "run", "2026-11-01", "eval", f"turn-{number}", "clean", MODEL,
                      "local-server", f"hash-{number}", 1, time.time())
    spool.sent(attempt)
    attempt.http_status, attempt.billed, attempt.outcome, attempt.model_version = 200, True, ACCEPTED, MODEL
    attempt.usage = Usage(input_tokens=1000, output_tokens=100, total_tokens=1100)
    spool.done(attempt)
    cache.put(f"hash-{number}", f"text-{number}", "clean", MODEL, {"cleaned_text": f"turn {number}"}, attempt.usage,
              f"context-{number}")


def counts(database) -> tuple[int, int, Decimal]:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute("SELECT (SELECT count(*) FROM llm_attempts), (SELECT count(*) FROM llm_response_cache), "
                                  "(SELECT sum(cost_usd) FROM llm_attempts)").fetchone()


def checkpoints_for(database, in_child_process: bool, logged: list[str]):
    cache = ResponseCache(database)
    spool = AttemptSpool(spool_folder(database), "run")
    return Checkpoints(database, cache, spool, PriceBook(), logged.append, 60.0, in_child_process), cache, spool


def test_a_child_checkpoint_writes_what_a_thread_writes(tmp_path):
    results = {}
    for in_child in (True, False):
        database, logged = tmp_path / f"child-{in_child}.duckdb", []
        checkpoints, cache, spool = checkpoints_for(database, in_child, logged)
        assert (checkpoints._writer is not None) == in_child
        for number in range(50):
            answered(spool, cache, number)
        assert asyncio.run(checkpoints.checkpoint())
        mid_run = counts(database)
        for number in range(50, 60):
            answered(spool, cache, number)
        assert checkpoints.finish() == (60, 60)
        results[in_child] = (mid_run, counts(database), checkpoints.spent)
        assert logged == []
    assert results[True] == results[False]
    (mid_attempts, mid_entries, mid_cost), (attempts, entries, cost), spent = results[True]
    assert (mid_attempts, mid_entries, attempts, entries) == (50, 50, 60, 60)
    assert spent == cost > mid_cost > 0


def test_a_killed_child_loses_nothing_the_checkpoint_is_written_here_instead(tmp_path):
    database, logged = tmp_path / "cache.duckdb", []
    checkpoints, cache, spool = checkpoints_for(database, True, logged)
    child = checkpoints._writer._child
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for number in range(20):
        answered(spool, cache, number)
    assert asyncio.run(checkpoints.checkpoint())
    assert any("checkpoint process gone" in line for line in logged)
    assert checkpoints._writer is None
    assert counts(database)[:2] == (20, 20)
    answered(spool, cache, 20)
    assert checkpoints.finish() == (21, 21)


def test_the_child_ends_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from cost_pipeline.costs.checkpoint_process import CheckpointProcess
from cost_pipeline.costs.pricing import PriceBook
writer = CheckpointProcess({str(tmp_path / 'db.duckdb')!r}, PriceBook())
print(writer._child.pid, flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert alive(child_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while alive(child_pid):
        if time.monotonic() > deadline:
            pytest.fail("the checkpoint process outlived its parent")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Running: a process that exited is gone, or a zombie until whoever adopted it reaps it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return not stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return False


def test_a_writer_that_cannot_start_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    with pytest.raises(WriterGone, match="did not start"):
        CheckpointProcess(tmp_path / "db.duckdb", PriceBook())
