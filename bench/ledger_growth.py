"""What one checkpoint costs as the ledger and the response cache grow over a deployment's lifetime.

A running day writes its new attempts (`load_spools`) and cache entries (`ResponseCache.write`)
every few seconds. Their cost must depend on the batch written, not on every row ever
written: this prints, for a ledger and a cache of N rows each (N = `--rows`, spread over
days as 30,000 attempts a day), the time and the peak memory above the process's resting
RSS of one checkpoint of `--batch` attempts (of the last data day, already holding rows) and
as many cache entries, and of one chunk's cache read by turn text. Each size runs in a fresh
child process, on a DuckDB file built for it.

    python bench/ledger_growth.py --rows 10000,300000,3000000
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from results import record  # noqa: E402

ATTEMPTS_PER_DAY = 30_000


def build(database: Path, rows: int) -> None:
    """A ledger and a cache of `rows` rows each, in the tables' own schema (created by the code that writes them)."""
    from cost_pipeline.gemini.cache import DDL as CACHE_DDL
    from cost_pipeline.gemini.cache import TABLE as CACHE
    from cost_pipeline.money.ledger import TABLE, ensure_ledger
    from cost_pipeline.storage.connect import connect

    ensure_ledger(database)
    with connect(database) as connection:
        connection.execute(CACHE_DDL)
        connection.execute(f"""
            INSERT INTO {TABLE} (attempt_id, call_id, run_id, partition_date, evaluation_id, turn_id, stage, model,
                                 endpoint, processing, request_hash, attempt, sent_at, outcome, billed, input_tokens,
                                 output_tokens, cost_usd, recorded_at, recovered)
            SELECT md5(i::VARCHAR || 'a'), md5(i::VARCHAR || 'c'), 'run-' || (i // 5000)::VARCHAR,
                   DATE '2026-01-01' + (i // {ATTEMPTS_PER_DAY})::INTEGER, 'eval-' || (i % 5)::VARCHAR,
                   md5(i::VARCHAR || 't'), 'clean', 'gemini-2.5-flash-lite', 'local-server', 'standard',
                   sha256(i::VARCHAR), 1, now(), 'accepted', true, 120, 30, 0.000024, now(), false
            FROM range({rows}) t(i)""")
        connection.execute(f"""
            INSERT INTO {CACHE} SELECT sha256(i::VARCHAR), md5(i::VARCHAR || 't'), 'clean', 'gemini-2.5-flash-lite',
                   '{{"cleaned_text": "a cleaned turn of about this length", "confidence": 0.9}}', 120, 30, 0, 0, 0,
                   150, 'reported', now(), md5(i::VARCHAR || 'c')
            FROM range({rows}) t(i)""")


def last_day(rows: int) -> str:
    """The data day of the last rows built: a checkpoint of a day already under way lands there."""
    from datetime import date, timedelta

    return str(date(2026, 1, 1) + timedelta(days=(rows - 1) // ATTEMPTS_PER_DAY))


def spooled_batch(database: Path | str, batch: int, day: str):
    """`batch` answered attempts of `day` in a closed spool, and as many new cache entries: one checkpoint's worth."""
    from cost_pipeline.gemini.attempts import ACCEPTED, Attempt
    from cost_pipeline.gemini.cache import ResponseCache
    from cost_pipeline.gemini.usage import Usage
    from cost_pipeline.money.ledger import AttemptSpool, spool_folder

    run_id = uuid.uuid4().hex
    spool = AttemptSpool(spool_folder(database), run_id)
    cache = ResponseCache(database)
    now = time.time()
    for i in range(batch):
        attempt = Attempt(
            uuid.uuid4().hex,
            uuid.uuid4().hex,
            run_id,
            day,
            "eval-0",
            f"t{i}",
            "clean",
            "gemini-2.5-flash-lite",
            "local-server",
            uuid.uuid4().hex,
            1,
            now,
        )
        spool.sent(attempt)
        attempt.http_status, attempt.billed, attempt.outcome = 200, True, ACCEPTED
        attempt.usage = Usage(input_tokens=120, output_tokens=30, total_tokens=150)
        attempt.model_version, attempt.latency_ms = "gemini-2.5-flash-lite", 300.0
        spool.done(attempt)
        cache.put(
            attempt.request_hash,
            f"t{i}",
            "clean",
            "gemini-2.5-flash-lite",
            {"cleaned_text": f"turn {i}"},
            attempt.usage,
            context_hash=f"c{i}",
        )
    spool.close()
    return spool, cache


def checkpoint(database: Path | str, batch: int, day: str, rows: int) -> dict:
    """One checkpoint's time and peak memory above the resting RSS, measured in this (fresh) process."""
    from cost_pipeline.gemini.usage import Usage
    from cost_pipeline.money.ledger import load_spools
    from cost_pipeline.money.pricing import PriceBook

    book = PriceBook()
    spool, cache = spooled_batch(database, batch, day)
    book.cost(
        "gemini-2.5-flash-lite", Usage(input_tokens=120, output_tokens=30), datetime.now(timezone.utc)
    )  # warm its tables
    entries = cache.take_new()
    resting = _rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is this checkpoint's
    started = time.perf_counter()
    added = load_spools(database, book, only=spool.path)
    ledger_s = time.perf_counter() - started
    started = time.perf_counter()
    written = cache.write(entries)
    cache_s = time.perf_counter() - started
    assert added == batch and written == batch, (added, written)
    checkpoint_peak = _status_mb("VmHWM") - resting
    # A chunk of conversations loads its cached answers by turn context and text: here, 250 new and 250 old cleanings.
    resting = _rss_mb()
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    found = cache.read(
        [f"t{i}" for i in range(250)] + [_old(i, "t") for i in range(250)],
        [f"c{i}" for i in range(250)] + [_old(i, "c") for i in range(250)],
    )
    read_s = time.perf_counter() - started
    assert len(found) == min(batch, 250) + min(rows, 250), len(found)
    return {
        "ledger_s": round(ledger_s, 3),
        "cache_s": round(cache_s, 3),
        "read_s": round(read_s, 3),
        "peak_above_resting_mb": round(checkpoint_peak, 1),
        "read_peak_above_resting_mb": round(_status_mb("VmHWM") - resting, 1),
    }


def _old(i: int, kind: str) -> str:
    """The text (t) or context (c) key `build` gave old row i."""
    import hashlib

    return hashlib.md5(f"{i}{kind}".encode()).hexdigest()


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,300000,3000000", help="ledger and cache sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=1700, help="attempts (and cache entries) per checkpoint")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--day", help=argparse.SUPPRESS)
    parser.add_argument("--built-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(checkpoint(Path(args.child), args.batch, args.day, args.built_rows)))
        return
    print(f"one checkpoint of {args.batch:,} attempts and {args.batch:,} cache entries, by ledger and cache size")
    sizes, inserts, peaks = [int(size) for size in args.rows.split(",")], [], []
    for rows in sizes:
        with tempfile.TemporaryDirectory() as folder:
            database = Path(folder) / "store.duckdb"
            build(database, rows)
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(database),
                    "--batch",
                    str(args.batch),
                    "--day",
                    last_day(rows),
                    "--built-rows",
                    str(rows),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(done.stdout.splitlines()[-1])
        print(
            f"{rows:>10,} rows: ledger insert {figures['ledger_s']:.3f} s, cache write {figures['cache_s']:.3f} s, "
            f"peak {figures['peak_above_resting_mb']:.0f} MB above resting RSS; a chunk's cache read "
            f"{figures['read_s']:.3f} s, peak {figures['read_peak_above_resting_mb']:.0f} MB"
        )
        inserts.append(f"{figures['ledger_s']:.2f}")
        peaks.append(f"{figures['peak_above_resting_mb']:.0f}")
    record(
        "ledger_growth.py",
        "one checkpoint as the ledger and cache grow",
        f"ledger insert **{' / '.join(inserts)} s**, {' / '.join(peaks)} MB at "
        f"{' / '.join(f'{size:,}' for size in sizes)} rows",
        "flat",
    )


if __name__ == "__main__":
    main()
