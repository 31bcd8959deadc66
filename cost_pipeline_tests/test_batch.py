"""Batch processing against the local server's Batch API: the same rows as standard mode at about half the price,
errors inside a job, and a job still pending when the step stops waiting, resumed, never paid twice."""

from datetime import date

import duckdb
import pytest

from cost_pipeline.ingest.synthetic import generate

from .conftest import SMALL_DAYS_COSTS, materialize_command, materialize_day
from .test_ledger import ledger_bill, server_bill

DAY = date(2026, 11, 6)


def batch(**processing) -> dict:
    """The Gemini resource's sections for Batch API processing, polling fast."""
    return {"processing": {"mode": "batch", "batch_poll_s": 0.1, **processing}}


BATCH = batch()


def _rows(database, table: str, columns: str) -> dict:
    with duckdb.connect(str(database), read_only=True) as connection:
        return {row[0]: row[1:] for row in connection.execute(f"SELECT turn_id, {columns} FROM {table}").fetchall()}


def _resumed_and_paid_once(database, model_server, turns: int) -> None:
    """After a pending job was resumed: two jobs in all (the cleaning job resumed, then the function job), the day
    written, no request answered (and paid for) twice, and the ledger equal to the server's billing record."""
    assert model_server.stats()["batches_created"] == 2
    assert len(_rows(database, "cleaned_turns", "status")) == turns
    _, _, _, distinct_accepted, accepted = _spend(database)
    assert distinct_accepted == accepted
    assert ledger_bill(database) == server_bill(model_server)


def _spend(database) -> tuple:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(
            "SELECT sum(cost_usd), count(*) FILTER (WHERE processing = 'batch'), count(*), "
            "count(DISTINCT request_hash) FILTER (WHERE outcome = 'accepted'), "
            "count(*) FILTER (WHERE outcome = 'accepted') FROM llm_attempts"
        ).fetchone()


@pytest.mark.slow
def test_a_batch_day_has_the_rows_of_a_standard_day_at_about_half_the_price(tmp_path, landing_root, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=300, seed=71)
    model_server.configure(batch_delay_s=0.3)
    batch_store, standard_store = tmp_path / "batch.duckdb", tmp_path / "standard.duckdb"
    assert materialize_day(DAY, landing_root, batch_store, model_server, gemini=BATCH, costs=SMALL_DAYS_COSTS).success
    stats = model_server.stats()
    assert (
        stats["batches_created"] == 2 and stats.get("requests", 0) == 0
    )  # one cleaning job, one function job; no single calls
    assert ledger_bill(batch_store) == server_bill(model_server)
    model_server.reset()
    assert materialize_day(DAY, landing_root, standard_store, model_server, costs=SMALL_DAYS_COSTS).success

    # The local model cleans the turn alone, so raw context changes nothing here (a real model may differ a little).
    cleaned = _rows(batch_store, "cleaned_turns", "status, cleaned_text")
    assert cleaned == _rows(standard_store, "cleaned_turns", "status, cleaned_text") and len(cleaned) == 300
    assert _rows(batch_store, "function_calls", "function_name, arguments") == _rows(
        standard_store, "function_calls", "function_name, arguments"
    )
    batch_spend, batch_attempts, attempts, *_ = _spend(batch_store)
    standard_spend, standard_batch_attempts, *_ = _spend(standard_store)
    assert batch_attempts == attempts and standard_batch_attempts == 0
    ratio = batch_spend / standard_spend
    print(f"batch ${batch_spend:.6f} vs standard ${standard_spend:.6f}: {ratio:.3f}x")
    assert 0.45 <= ratio <= 0.6  # half the input and output price; cache reads stay at the standard rate
    with duckdb.connect(str(batch_store), read_only=True) as connection:  # the rollup splits spend by processing
        assert connection.execute("SELECT sum(spend_usd), sum(batch_spend_usd) FROM daily_cost_rollup").fetchone() == (
            batch_spend,
            batch_spend,
        )
        # The cost of the data is priced at the batch rate too: one run, so it equals the spend.
        assert connection.execute("SELECT sum(total_cost_usd) FROM llm_calls").fetchone()[0] == batch_spend


@pytest.mark.slow
def test_errors_inside_a_job_fail_their_calls_unbilled_and_a_rerun_completes_them(
    tmp_path, landing_root, database, model_server
):
    generate(landing_root, DAY, days=1, turns_per_day=120, seed=72)
    model_server.configure(rate_batch_error=0.2, seed=3)
    first = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        gemini=BATCH,
        costs=SMALL_DAYS_COSTS,
        raise_on_error=False,
        run_config={"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}},
    )
    assert first.success
    statuses = _rows(database, "cleaned_turns", "status, error")
    failed = [error for status, error in statuses.values() if status == "failed"]
    assert failed and all(error.startswith("batch error 13") for error in failed)
    with duckdb.connect(str(database), read_only=True) as connection:
        unbilled = connection.execute(
            "SELECT count(*) FROM llm_attempts WHERE outcome = 'error' AND NOT billed AND cost_usd = 0"
        ).fetchone()[0]
    assert unbilled == model_server.stats()["batch_request_errors"] > 0
    assert ledger_bill(database) == server_bill(model_server)

    model_server.configure(rate_batch_error=0.0)
    assert materialize_day(DAY, landing_root, database, model_server, gemini=BATCH, costs=SMALL_DAYS_COSTS).success
    assert {status for status, _ in _rows(database, "cleaned_turns", "status, error").values()} == {"ok"}
    _, _, _, distinct_accepted, accepted = _spend(database)
    assert distinct_accepted == accepted  # no request was answered, and paid for, twice
    assert ledger_bill(database) == server_bill(model_server)


@pytest.mark.slow
def test_a_job_still_pending_when_the_step_stops_waiting_is_resumed_not_paid_again(
    tmp_path, landing_root, database, model_server
):
    generate(landing_root, DAY, days=1, turns_per_day=80, seed=73)
    model_server.configure(batch_delay_s=3.0)
    waiting = materialize_day(
        DAY, landing_root, database, model_server, costs=SMALL_DAYS_COSTS, gemini=batch(batch_max_wait_s=0.5)
    )
    assert waiting.success  # ends cleanly: no rows yet, the job recorded
    assert not waiting.asset_materializations_for_node("turns_through_gemini")
    with duckdb.connect(str(database), read_only=True) as connection:
        jobs = connection.execute("SELECT job_name, stage, state, collected_at FROM llm_batch_jobs").fetchall()
    assert [(stage, state, collected) for _, stage, state, collected in jobs] == [("clean", "JOB_STATE_PENDING", None)]
    assert model_server.billing() == []

    # The sensor waits while the job runs, then runs the day again to collect it.
    import time

    import dagster as dg

    from cost_pipeline.defs.automation import batch_jobs_sensor
    from cost_pipeline.defs.gemini.resource import GeminiResource

    def sensor():
        gemini = GeminiResource(endpoint={"base_url": model_server.url}, cache={"database": str(database)})
        with dg.build_sensor_context(resources={"gemini": gemini}) as context:
            return batch_jobs_sensor(context)

    still = sensor()
    assert isinstance(still, dg.SkipReason) and "still running" in still.skip_message
    time.sleep(3.0)
    (request,) = sensor().run_requests
    assert request.partition_key == str(DAY) and request.run_key == f"batch:{jobs[0][0]}"

    finished = materialize_day(
        DAY, landing_root, database, model_server, costs=SMALL_DAYS_COSTS, gemini=batch(batch_max_wait_s=30)
    )
    assert finished.success
    _resumed_and_paid_once(database, model_server, 80)


@pytest.mark.slow
def test_kill_9_while_a_job_is_pending_resumes_the_same_job_and_pays_nothing_twice(
    tmp_path, landing_root, database, model_server
):
    import os
    import signal
    import subprocess
    import time

    from .conftest import REPO, dagster_home

    generate(landing_root, DAY, days=1, turns_per_day=80, seed=74)
    model_server.configure(batch_delay_s=6.0)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home(tmp_path / "home")),
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing_root),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
        "COST_PIPELINE_PROCESSING": "batch",
        "GOOGLE_GEMINI_BASE_URL": model_server.url,
        "COST_PIPELINE_BILLING": str(tmp_path / "billing"),
    }
    env.pop("GEMINI_API_KEY", None), env.pop("GOOGLE_API_KEY", None)
    command = materialize_command(
        "raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls", "--partition", str(DAY)
    )
    run = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not model_server.stats().get("batches_created"):
        assert time.monotonic() < deadline and run.poll() is None, "the run never submitted its job"
        time.sleep(0.2)
    time.sleep(1.0)  # the job is recorded before any waiting
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    with duckdb.connect(str(database), read_only=True) as connection:
        (recorded,) = connection.execute("SELECT count(*) FROM llm_batch_jobs WHERE collected_at IS NULL").fetchone()
    assert recorded == 1

    assert subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    _resumed_and_paid_once(database, model_server, 80)


@pytest.mark.slow
def test_a_day_too_large_to_inline_goes_through_uploaded_files_and_its_usd_matches_the_invoice(
    tmp_path, landing_root, database, model_server
):
    from datetime import datetime, timezone

    from .test_reconciliation import check, reconcile

    generate(landing_root, DAY, days=1, turns_per_day=60, seed=75)
    standard_store = tmp_path / "standard.duckdb"
    assert materialize_day(DAY, landing_root, standard_store, model_server, costs=SMALL_DAYS_COSTS).success
    model_server.reset()
    # Any job over 1 kB of requests is sent as an uploaded JSON Lines file: here, both stages' jobs.
    assert materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        costs=SMALL_DAYS_COSTS,
        gemini=batch(batch_inline_max_bytes=1000),
    ).success
    stats = model_server.stats()
    assert stats["batches_created"] == stats["batches_from_file"] == 2 and stats.get("requests", 0) == 0
    # The requests in the file are the ones inlining sends (the SDK's own conversion): the same rows as standard mode.
    for table, columns in (("cleaned_turns", "status, cleaned_text"), ("function_calls", "function_name, arguments")):
        assert _rows(database, table, columns) == _rows(standard_store, table, columns)

    # The invoice (the server's Cloud Billing export: batch SKUs at batch prices) equals the ledger in dollars,
    # line by line, with batch usage on its own lines.
    folder = tmp_path / "billing"
    folder.mkdir()
    (folder / "export.csv").write_text(model_server.billing_export())
    result = reconcile(landing_root, database, model_server, folder, datetime.now(timezone.utc).date())
    assert result.success and check(result).passed
    with duckdb.connect(str(database), read_only=True) as connection:
        processing, invoice, ledger, gaps = connection.execute(
            "SELECT list(DISTINCT tier), sum(invoice_usd), sum(ledger_usd), count(*) FILTER (WHERE usd_gap <> 0) "
            "FROM billing_reconciliation"
        ).fetchone()
    spend = _spend(database)[0]
    assert processing == ["batch"] and invoice == ledger == spend > 0 and gaps == 0


@pytest.mark.slow
def test_a_pending_job_whose_requests_changed_since_is_still_collected_and_its_answers_paid_once(
    tmp_path, landing_root, database, model_server
):
    import json
    import urllib.request

    generate(landing_root, DAY, days=1, turns_per_day=40, seed=76)
    model_server.configure(batch_delay_s=1.5)
    waiting = materialize_day(
        DAY, landing_root, database, model_server, costs=SMALL_DAYS_COSTS, gemini=batch(batch_max_wait_s=0.2)
    )
    assert waiting.success and not waiting.asset_materializations_for_node("turns_through_gemini")

    # The cleaning model changes while the job is pending: none of its requests is asked again, but it was paid for.
    changed = {**batch(batch_max_wait_s=30), "models": {"clean_model": "gemini-2.5-flash"}}
    assert materialize_day(DAY, landing_root, database, model_server, costs=SMALL_DAYS_COSTS, gemini=changed).success
    with duckdb.connect(str(database), read_only=True) as connection:
        jobs = connection.execute(
            "SELECT job_name, stage, model, collected_at IS NOT NULL FROM llm_batch_jobs ORDER BY submitted_at"
        ).fetchall()
    assert [(stage, model, collected) for _, stage, model, collected in jobs] == [
        ("clean", "gemini-2.5-flash-lite", True),
        ("clean", "gemini-2.5-flash", True),
        ("function", "gemini-2.5-flash-lite", True),
    ]
    # The provider finishes (and bills) every job whoever asks; asking again now changes nothing.
    for name, *_ in jobs:
        with urllib.request.urlopen(f"{model_server.url}/v1beta/{name}") as reply:
            assert json.load(reply)["done"]
    assert ledger_bill(database) == server_bill(model_server)

    # The old job's answers reached the cache: back on the first model, the cleaning costs nothing more.
    created = model_server.stats()["batches_created"]
    assert materialize_day(DAY, landing_root, database, model_server, costs=SMALL_DAYS_COSTS, gemini=BATCH).success
    assert model_server.stats()["batches_created"] == created
    assert ledger_bill(database) == server_bill(model_server)


def test_the_cli_names_the_days_whose_jobs_are_still_pending(tmp_path, monkeypatch):
    from cost_pipeline.cli import _batch_jobs_pending
    from cost_pipeline.gemini.batch import jobs as batch_jobs

    database = tmp_path / "jobs.duckdb"
    monkeypatch.setenv("COST_PIPELINE_DB", str(database))
    assert _batch_jobs_pending([DAY]) is None
    for name, state in (("batches/a", "JOB_STATE_PENDING"), ("batches/b", "JOB_STATE_FAILED")):
        batch_jobs.record(
            database, batch_jobs.SubmittedJob(name, str(DAY), "clean", "m", "e", "digest", 3, 0, "run", state)
        )
    assert "still pending for 2026-11-06" in _batch_jobs_pending([DAY])
    assert _batch_jobs_pending([date(2026, 11, 7)]) is None
    batch_jobs.update(database, "batches/a", "JOB_STATE_SUCCEEDED", collected=True)
    assert _batch_jobs_pending([DAY]) is None


@pytest.mark.slow
def test_a_result_file_gone_before_collection_is_said_and_its_requests_asked_again(
    tmp_path, landing_root, database, model_server, capfd
):
    import json
    import urllib.request

    generate(landing_root, DAY, days=1, turns_per_day=30, seed=77)
    model_server.configure(batch_delay_s=0.5)
    files = batch(batch_inline_max_bytes=1000)
    assert materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        costs=SMALL_DAYS_COSTS,
        gemini=batch(batch_inline_max_bytes=1000, batch_max_wait_s=0.1),
    ).success
    with duckdb.connect(str(database), read_only=True) as connection:
        ((name,),) = connection.execute("SELECT job_name FROM llm_batch_jobs").fetchall()
    import time

    time.sleep(0.6)
    with urllib.request.urlopen(f"{model_server.url}/v1beta/{name}") as reply:  # the job runs, and is billed
        result_file = json.load(reply)["metadata"]["output"]["responsesFile"]
    urllib.request.urlopen(urllib.request.Request(f"{model_server.url}/v1beta/{result_file}", method="DELETE")).close()

    model_server.configure(batch_delay_s=0.0)
    result = materialize_day(DAY, landing_root, database, model_server, costs=SMALL_DAYS_COSTS, gemini=files)
    assert result.success  # the day is not stuck on a job whose answers can no longer be read
    warnings = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line and "is gone" in line]
    assert warnings and result_file in warnings[0] and "billed but cannot be recorded" in warnings[0]
    with duckdb.connect(str(database), read_only=True) as connection:
        states = dict(connection.execute("SELECT job_name, state FROM llm_batch_jobs").fetchall())
        statuses = {row[0] for row in connection.execute("SELECT status FROM cleaned_turns").fetchall()}
    assert states[name] == "JOB_STATE_FAILED" and len(states) == 3 and statuses == {"ok"}


def test_the_sensor_runs_the_day_of_a_job_the_provider_no_longer_has(tmp_path, model_server):
    import dagster as dg

    from cost_pipeline.defs.automation import batch_jobs_sensor
    from cost_pipeline.defs.gemini.resource import GeminiResource
    from cost_pipeline.gemini.batch import jobs as batch_jobs

    database = tmp_path / "jobs.duckdb"
    expired = batch_jobs.SubmittedJob(
        "batches/expired-long-ago", str(DAY), "clean", "m", "e", "d", 1, 0, "run", "JOB_STATE_PENDING"
    )
    batch_jobs.record(database, expired)
    gemini = GeminiResource(endpoint={"base_url": model_server.url}, cache={"database": str(database)})
    with dg.build_sensor_context(resources={"gemini": gemini}) as context:
        (request,) = batch_jobs_sensor(context).run_requests
    assert request.partition_key == str(DAY)
