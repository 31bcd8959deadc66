"""The step's writer process: checkpoints and staged chunks as the step would write them, and nothing lost when the
writer or its parent dies."""

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import duckdb
import pytest

from cost_pipeline.gemini.attempts import ACCEPTED, Attempt
from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini.call_ids import call_id
from cost_pipeline.gemini.usage import Usage
from cost_pipeline.gemini_step.checkpoints import Checkpoints
from cost_pipeline.gemini_step.process_memory import peak_rss_mb
from cost_pipeline.gemini_step.staged_day import StagedDay
from cost_pipeline.gemini_step.tables import COLUMN_TYPES
from cost_pipeline.gemini_step.writer_process import WriterGone, WriterProcess
from cost_pipeline.money.ledger import AttemptSpool, spool_folder
from cost_pipeline.money.pricing import PriceBook
from cost_pipeline.storage.staging import StagingArea, query_staged

MODEL = "gemini-2.5-flash-lite"


def answered(spool: AttemptSpool, cache: ResponseCache, number: int) -> None:
    """One billed attempt in the spool and its answer in the cache, as a session records them."""
    attempt = Attempt(
        uuid.uuid4().hex,
        f"call-{number}",
        "run",
        "2026-11-01",
        "eval",
        f"turn-{number}",
        "clean",
        MODEL,
        "local-server",
        f"hash-{number}",
        1,
        time.time(),
    )
    spool.sent(attempt)
    attempt.http_status, attempt.billed, attempt.outcome, attempt.model_version = 200, True, ACCEPTED, MODEL
    attempt.usage = Usage(input_tokens=1000, output_tokens=100, total_tokens=1100)
    spool.done(attempt)
    cache.put(
        f"hash-{number}",
        f"text-{number}",
        "clean",
        MODEL,
        {"cleaned_text": f"turn {number}"},
        attempt.usage,
        f"context-{number}",
    )


def counts(database) -> tuple[int, int, Decimal]:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(
            "SELECT (SELECT count(*) FROM llm_attempts), (SELECT count(*) FROM llm_response_cache), "
            "(SELECT sum(cost_usd) FROM llm_attempts)"
        ).fetchone()


def checkpoints_for(database, writer: WriterProcess | None, logged: list[str]):
    cache = ResponseCache(database)
    spool = AttemptSpool(spool_folder(database), "run")
    return Checkpoints(database, cache, spool, PriceBook(), logged.append, 60.0, writer), cache, spool


def kill(writer: WriterProcess) -> None:
    os.kill(writer._child.pid, signal.SIGKILL)
    writer._child.wait()


def test_a_child_checkpoint_writes_what_a_thread_writes(tmp_path):
    results = {}
    for in_child in (True, False):
        database, logged = tmp_path / f"child-{in_child}.duckdb", []
        writer = WriterProcess(database, PriceBook()) if in_child else None
        checkpoints, cache, spool = checkpoints_for(database, writer, logged)
        for number in range(50):
            answered(spool, cache, number)
        assert asyncio.run(checkpoints.checkpoint())
        mid_run = counts(database)
        for number in range(50, 60):
            answered(spool, cache, number)
        assert checkpoints.finish() == (60, 60)
        if writer:
            writer.close()
        results[in_child] = (mid_run, counts(database), checkpoints.spent)
        assert logged == []
    assert results[True] == results[False]
    (mid_attempts, mid_entries, mid_cost), (attempts, entries, cost), spent = results[True]
    assert (mid_attempts, mid_entries, attempts, entries) == (50, 50, 60, 60)
    assert spent == cost > mid_cost > 0


def test_a_killed_child_loses_nothing_the_checkpoint_is_written_here_instead(tmp_path):
    database, logged = tmp_path / "cache.duckdb", []
    writer = WriterProcess(database, PriceBook())
    checkpoints, cache, spool = checkpoints_for(database, writer, logged)
    kill(writer)
    for number in range(20):
        answered(spool, cache, number)
    assert asyncio.run(checkpoints.checkpoint())
    assert any("writer process gone" in line for line in logged)
    assert checkpoints._writer is None
    assert counts(database)[:2] == (20, 20)
    answered(spool, cache, 20)
    assert checkpoints.finish() == (21, 21)


def test_the_child_ends_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys, time
from cost_pipeline.gemini_step.writer_process import WriterProcess
from cost_pipeline.money.pricing import PriceBook
from cost_pipeline.gemini_step.staged_day import StagedDay
from cost_pipeline.gemini_step.writer_process import WriterGone, WriterProcess
writer = WriterProcess({str(tmp_path / "db.duckdb")!r}, PriceBook())
print(writer._child.pid, flush=True)
time.sleep(600)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    assert alive(child_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while alive(child_pid):
        if time.monotonic() > deadline:
            pytest.fail("the writer process outlived its parent")
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
        WriterProcess(tmp_path / "db.duckdb", PriceBook())


def conversation_rows(number: int) -> tuple[list[dict], list[dict], list[dict]]:
    """A two-turn conversation's rows as the Gemini stage hands them to staging: two cleanings, one decision."""
    turns = [f"conv{number}-turn{index}" for index in range(2)]
    cleaned = [
        {
            "turn_id": turn,
            "evaluation_id": "eval",
            "conversation_id": f"conv{number}",
            "turn_index": index,
            "speaker": "User",
            "created_at": datetime(2026, 11, 1, tzinfo=timezone.utc),
            "raw_text": "uh hi",
            "cleaned_text": "Hi.",
            "status": "ok",
            "call_id": call_id(turn, "clean"),
        }
        for index, turn in enumerate(turns)
    ]
    functions = [
        {
            "turn_id": turns[0],
            "evaluation_id": "eval",
            "conversation_id": f"conv{number}",
            "turn_index": 0,
            "function_name": None,
            "status": "ok",
            "call_id": call_id(turns[0], "function"),
        }
    ]
    calls = [
        {
            "call_id": call_id(turn, stage),
            "evaluation_id": "eval",
            "turn_id": turn,
            "stage": stage,
            "model": MODEL,
            "model_version": MODEL,
            "input_tokens": 1000 + number,
            "output_tokens": 50,
            "total_tokens": 1050 + number,
            "cache_hit": False,
            "status": "ok",
            "called_at": datetime(2026, 11, 1, tzinfo=timezone.utc),
        }
        for turn, stage in ((turns[0], "clean"), (turns[1], "clean"), (turns[0], "function"))
    ]
    return cleaned, functions, calls


def staged_rows(tables) -> list:
    cleaned, functions, calls = tables
    return [query_staged("SELECT * FROM t ORDER BY ALL", t=table) for table in (cleaned, functions, calls)]


@pytest.mark.parametrize("writer_dies", [False, True])
def test_chunks_staged_by_the_writer_are_the_chunks_the_step_stages(tmp_path, writer_dies):
    staged = {}
    for in_child in (True, False):
        area = StagingArea(tmp_path / f"staging-{in_child}", "run")
        writer = WriterProcess(tmp_path / "db.duckdb", PriceBook()) if in_child else None
        day = StagedDay(area, PriceBook(), 7, writer)
        for number in range(10):
            day(*conversation_rows(number))
            if writer and writer_dies and number == 4:
                kill(writer)  # chunks after this one (and any it had not confirmed) are staged by the step
        tables = day.close()
        assert [table.rows for table in tables] == [20, 10, 30]
        assert len(tables[2].paths) == 4  # three chunks of 9 calls (3 conversations each), the last of 3
        staged[in_child] = staged_rows(tables)
        if writer:
            writer.close()
    assert staged[True] == staged[False]
    (cleaned, _, calls) = staged[True]
    assert all(row[-1] is not None and row[-1] > 0 for row in cleaned), "every turn carries its cost"
    assert not list((tmp_path / "staging-True" / "run").glob("*.partial"))


def test_a_table_without_rows_is_staged_as_an_empty_file_with_its_columns(tmp_path):
    area = StagingArea(tmp_path / "staging", "run")
    writer = WriterProcess(tmp_path / "db.duckdb", PriceBook())
    day = StagedDay(area, PriceBook(), 100, writer)
    cleaned, _, calls = conversation_rows(1)
    day(cleaned, [], calls[:2])
    _, functions, _ = day.close()
    writer.close()
    assert functions.rows == 0
    assert query_staged("SELECT count(*) FROM f", f=functions) == [(0,)]
    assert functions.columns == list(COLUMN_TYPES["function_calls"])


def test_the_writer_reports_its_own_peak_not_the_pages_of_the_step_that_started_it(tmp_path):
    held = bytearray(600 * 2**20)  # a step holding 600 MB, touched so it is resident
    held[::4096] = b"\x01" * len(held[::4096])
    database = tmp_path / "day.duckdb"
    writer = WriterProcess(database, PriceBook())
    logged: list[str] = []
    checkpoints, cache, spool = checkpoints_for(database, writer, logged)
    answered(spool, cache, 1)
    assert asyncio.run(checkpoints.checkpoint())  # the writer is closed after its work, as the step closes it
    writer.close()
    del held
    # What getrusage says of the child counts the parent's pages at fork; the child's own peak does not.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 > 600
    assert 20 < writer.peak_rss_mb < 400, writer.peak_rss_mb
    assert peak_rss_mb() > 600 and peak_rss_mb(os.getpid()) == peak_rss_mb()
    assert peak_rss_mb(writer._child.pid) is None  # gone: no figure rather than a wrong one
