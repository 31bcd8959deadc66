"""The spend ledger against the provider's own bill: every billed attempt, once, under rejections, faults, re-runs
and kills.

The shipped server is the provider here: it keeps a billing record of every 200 it
produced (`/admin/billing`), whatever reached the client. Each test compares
`llm_attempts` with that record token by token and response by response.
"""

import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.model_server.server import key_fingerprint
from cost_pipeline.money.ledger import INTERRUPTED, attempt_rows, spool_folder

from .conftest import REPO, dagster_home, materialize_command, materialize_day

DAY = date(2026, 11, 1)
REJECTIONS = [
    "rate_off_format",
    "rate_max_tokens",
    "rate_safety",
    "rate_blocked_prompt",
    "rate_undeclared_tool",
    "rate_bad_arguments",
    "rate_malformed_function_call",
]
NO_FAILURE_LIMIT = {"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}}


def kind_tokens(prompt: int, cached: int, candidates: int, thoughts: int, tool_prompt: int) -> dict[str, int]:
    """One response's tokens by invoice kind: uncached prompt (tool-use prompt included), cached prompt, output."""
    return {"input": prompt - cached + tool_prompt, "cached_input": cached, "output": candidates + thoughts}


def query(database, sql, params=None):
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql, params or []).fetchall()


def server_bill(model_server, seen_by_client_only: bool = True) -> Counter:
    """Tokens by (served model, invoice kind) as the provider billed them."""
    bill = Counter()
    for record in model_server.billing():
        if seen_by_client_only and record["truncated"]:
            continue
        counts = [
            record[k]
            for k in (
                "promptTokenCount",
                "cachedContentTokenCount",
                "candidatesTokenCount",
                "thoughtsTokenCount",
                "toolUsePromptTokenCount",
            )
        ]
        for kind, tokens in kind_tokens(*counts).items():
            bill[(record["model"], kind)] += tokens
    return bill


def ledger_bill(database) -> Counter:
    bill = Counter()
    for model, prompt, cached, candidates, thoughts, tool in query(
        database,
        """
            SELECT model_version, input_tokens, cached_tokens, output_tokens, thinking_tokens, tool_prompt_tokens
            FROM llm_attempts WHERE billed""",
    ):
        for kind, tokens in kind_tokens(prompt, cached, candidates, thoughts, tool).items():
            bill[(model, kind)] += tokens
    return bill


def billed_response_ids(database) -> set[str]:
    return {r for (r,) in query(database, "SELECT response_id FROM llm_attempts WHERE billed")}


def assert_ledger_equals_the_bill(database, model_server):
    assert ledger_bill(database) == server_bill(model_server)
    assert billed_response_ids(database) == {r["response_id"] for r in model_server.billing() if not r["truncated"]}
    assert (
        query(database, "SELECT count(*), count(DISTINCT attempt_id) FROM llm_attempts")[0][0]
        == query(database, "SELECT count(DISTINCT attempt_id) FROM llm_attempts")[0][0]
    )


def assert_every_turn_ok_or_failed_with_a_reason(database):
    bad = query(
        database,
        """
        SELECT count(*) FROM (SELECT status, error FROM cleaned_turns
                              UNION ALL SELECT status, error FROM function_calls)
        WHERE NOT (status = 'ok' OR (status = 'failed' AND error IS NOT NULL))""",
    )
    assert bad == [(0,)]


def spend_matches_rollup(database) -> bool:
    ((ledger, rollup),) = query(
        database,
        f"""
        SELECT (SELECT sum(cost_usd) FROM llm_attempts WHERE partition_date = '{DAY}'),
               (SELECT sum(spend_usd) FROM daily_cost_rollup WHERE partition_date = '{DAY}')""",
    )
    return ledger == rollup and isinstance(ledger, Decimal)


@pytest.mark.parametrize("rate", [0.1, 0.3])
@pytest.mark.parametrize("kind", REJECTIONS)
def test_rejected_answers_are_billed_in_the_ledger_exactly_as_the_provider_billed_them(
    landing_root, database, model_server, kind, rate
):
    generate(landing_root, DAY, days=1, turns_per_day=60, seed=11)
    model_server.configure(**{kind: rate}, seed=5)
    result = materialize_day(DAY, landing_root, database, model_server, run_config=NO_FAILURE_LIMIT)
    assert result.success
    stats = model_server.stats()
    rejected = sum(v for k, v in stats.items() if k.startswith("rejection_"))
    assert rejected > 0, "the day should meet this kind of answer"
    assert_ledger_equals_the_bill(database, model_server)
    assert query(database, "SELECT count(*) FROM llm_attempts WHERE outcome = 'rejected' AND billed")[0][0] == rejected
    assert spend_matches_rollup(database)
    assert_every_turn_ok_or_failed_with_a_reason(database)
    # A rejected answer is never stored as an answer: no undeclared tool, no "no call" standing in for a rejection.
    assert query(database, "SELECT count(*) FROM function_calls WHERE function_name = 'book_flight'") == [(0,)]
    failed = query(database, "SELECT error FROM llm_calls WHERE status = 'failed'")
    assert all(error.startswith("rejected: ") for (error,) in failed)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["spend_matches_ledger"] and checks["rollup_reconciles_with_calls"]


def test_with_no_rejections_and_no_faults_spend_equals_the_cost_of_the_data(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=80, seed=3)
    materialize_day(DAY, landing_root, database, model_server)
    assert_ledger_equals_the_bill(database, model_server)
    ((spend, data),) = query(database, "SELECT sum(spend_usd), sum(total_cost_usd) FROM daily_cost_rollup")
    assert spend == data > 0


def test_a_retry_after_a_rejection_changes_the_request_and_the_cap_bounds_what_a_turn_pays(
    landing_root, database, model_server
):
    generate(landing_root, DAY, days=1, turns_per_day=40, seed=2)
    model_server.configure(rate_safety=1.0)
    materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        run_config=NO_FAILURE_LIMIT,
        gemini={"retries": {"max_rejected_attempts": 2}, "cache": {"enabled": False}},
    )
    assert query(database, "SELECT max(rejected_attempts), min(rejected_attempts) FROM llm_calls") == [(2, 2)]
    retries = [
        r["body"] for r in model_server.requests() if "Your previous answer was rejected" in json.dumps(r["body"])
    ]
    assert retries and all(b["generationConfig"]["seed"] == 2 for b in retries)
    assert_ledger_equals_the_bill(database, model_server)


def test_mixed_with_faults_and_cut_bodies_unknown_billing_is_counted_and_said(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=120, seed=31)
    model_server.configure(
        rate_429=0.1,
        rate_500=0.05,
        rate_503=0.05,
        rate_slow=0.03,
        slow_s=2.0,
        rate_truncated=0.05,
        rate_off_format=0.05,
        rate_max_tokens=0.05,
        rate_undeclared_tool=0.1,
        retry_delay_s=0.01,
        seed=9,
    )
    result = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        run_config=NO_FAILURE_LIMIT,
        gemini={"retries": {"timeout_s": 0.5, "max_attempts": 4}, "cache": {"enabled": False}},
    )
    assert result.success
    truncated = model_server.stats()["fault_truncated"]
    assert truncated > 0
    assert_ledger_equals_the_bill(database, model_server)
    unknown = query(
        database,
        "SELECT count(*) FROM llm_attempts WHERE billed IS NULL AND cost_usd IS NULL AND reason LIKE "
        "'%billing unknown%'",
    )
    assert unknown == [(truncated,)]
    assert query(database, "SELECT count(*) FROM llm_attempts WHERE NOT billed AND http_status IN (429, 500, 503)")[0][
        0
    ] == sum(model_server.stats().get(f"fault_{k}", 0) for k in ("429", "500", "503"))
    assert query(database, "SELECT sum(billing_unknown_attempts) FROM daily_cost_rollup") == [(truncated,)]
    metadata = result.asset_materializations_for_node("daily_cost_rollup")[0].metadata
    assert metadata["totals"].value.startswith("incomplete: leaves out") and spend_matches_rollup(database)
    assert_every_turn_ok_or_failed_with_a_reason(database)


def test_re_runs_add_to_spend_and_the_cost_of_the_data_follows_the_cache(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=60, seed=4)
    materialize_day(DAY, landing_root, database, model_server)
    materialize_day(DAY, landing_root, database, model_server, gemini={"cache": {"enabled": False}})
    materialize_day(DAY, landing_root, database, model_server)
    assert_ledger_equals_the_bill(database, model_server)
    ((spend, data, runs),) = query(
        database, "SELECT sum(spend_usd), sum(total_cost_usd), max(spend_runs) FROM daily_cost_rollup"
    )
    assert data == 0, "the third run was served from the cache: today's rows cost nothing more"
    billed = query(database, "SELECT run_id, sum(cost_usd) FROM llm_attempts GROUP BY 1")
    assert len(billed) == 2 and spend == sum(cost for _, cost in billed) and runs == 2
    assert all(cost > 0 for _, cost in billed)
    assert query(database, "SELECT count(*) FROM llm_calls WHERE NOT cache_hit") == [(0,)]


def test_a_run_that_trips_the_failure_share_still_leaves_its_bill_in_the_ledger(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=30, seed=8)
    model_server.configure(rate_safety=1.0)
    result = materialize_day(DAY, landing_root, database, model_server, raise_on_error=False)
    assert not result.success
    assert (
        "its billed attempts are in llm_attempts" in result.failure_data_for_node("turns_through_gemini").error.message
    )
    assert query(database, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'llm_calls'") == [(0,)]
    assert_ledger_equals_the_bill(database, model_server)
    assert query(database, "SELECT count(*) FROM llm_attempts WHERE outcome = 'rejected'")[0][0] == len(
        model_server.billing()
    )


def test_torn_and_unfinished_spool_lines_become_unknown_attempts():
    sent = {"event": "sent", "attempt_id": "a1", "call_id": "c", "model": "m", "sent_at": 1.0}
    rows = attempt_rows(
        [
            json.dumps(sent),
            json.dumps({**sent, "attempt_id": "a2"}),
            json.dumps({"event": "done", "attempt_id": "a2", "outcome": "accepted", "billed": True}),
            '{"event": "done", "attempt_id": "a1", "outc',
        ]
    )
    by_id = {row["attempt_id"]: row for row in rows}
    assert by_id["a2"]["outcome"] == "accepted"
    assert by_id["a1"]["outcome"] == "error" and by_id["a1"]["billed"] is None and by_id["a1"]["reason"] == INTERRUPTED


def run_day(env, cwd, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        materialize_command(
            "raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls,daily_cost_rollup",
            "--partition",
            str(DAY),
            *extra,
        ),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_env(tmp_path, landing_root, database, model_server, **extra) -> dict:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home(tmp_path / "home")),
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing_root),
        "COST_PIPELINE_COSTS": str(REPO / "costs.toml"),
        "GOOGLE_GEMINI_BASE_URL": model_server.url,
        **extra,
    }
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        if name not in extra:
            env.pop(name, None)
    return env


@pytest.mark.slow
def test_kill_9_mid_day_loses_no_billed_attempt_and_the_re_run_pays_only_for_calls_in_flight(
    tmp_path, landing_root, database, model_server
):
    """Checkpoints stretched past the kill, so only the killed run's spool holds what it was answered: the re-run
    loads its attempts into the ledger and its answers into the cache, and repeats only the calls in flight."""
    generate(landing_root, DAY, days=1, turns_per_day=600, seed=6)
    model_server.configure(latency_ms=20, rate_max_tokens=0.1)
    materialize_day(DAY, landing_root, tmp_path / "clean.duckdb", model_server, run_config=NO_FAILURE_LIMIT)
    clean_requests = model_server.stats()["requests"]
    model_server.reset()
    model_server.configure(latency_ms=20, rate_max_tokens=0.1)
    env = run_env(tmp_path, landing_root, database, model_server)
    often = json.dumps(
        {"ops": {"turns_through_gemini": {"config": {"checkpoint_every_s": 600.0, "max_failure_share": 1.0}}}}
    )
    run = run_day(env, tmp_path, "--config-json", often)
    deadline = time.monotonic() + 120
    # Answered (and so billed) requests, not requests received: up to max_concurrency of those are still in flight.
    while model_server.stats().get("ok", 0) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    killed_bill = {r["response_id"] for r in model_server.billing()}
    assert 150 <= len(killed_bill) and list(spool_folder(database).glob("*.jsonl")), "killed mid-day, spool left behind"

    killed_requests = model_server.stats()["requests"]
    model_server.configure(latency_ms=0)
    rerun = run_day(env, tmp_path, "--config-json", often)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-3000:]
    assert "recovered" in output and not list(spool_folder(database).glob("*.jsonl"))
    ledger_ids = billed_response_ids(database)
    missing = killed_bill - ledger_ids
    interrupted = query(database, "SELECT count(*) FROM llm_attempts WHERE reason = ? AND recovered", [INTERRUPTED])[0][
        0
    ]
    # Only answers in flight at the kill can be missing, and each of those is recorded as billing unknown.
    assert len(missing) <= interrupted <= 64
    assert ledger_ids <= {r["response_id"] for r in model_server.billing()}
    assert query(database, "SELECT count(DISTINCT run_id) FROM llm_attempts") == [(2,)]
    assert spend_matches_rollup(database)
    # Answers the spool holds are not paid for again: only calls in flight are (and the retries of answers cut short).
    paid_twice = model_server.stats()["requests"] - clean_requests
    assert 0 <= paid_twice <= 96 and paid_twice < killed_requests / 2, (clean_requests, killed_requests, paid_twice)


@pytest.mark.slow
def test_a_run_terminated_mid_day_records_its_own_bill_before_it_ends(tmp_path, landing_root, database, model_server):
    """SIGINT is how Dagster terminates a run (the UI's Terminate reaches the step's process as one, as Ctrl-C does):
    the step stops calling at once, and before its process ends its ledger holds every answer the provider billed, bar
    the attempts cut off in flight, each recorded as billing unknown; nothing is left for a later run to recover."""
    generate(landing_root, DAY, days=1, turns_per_day=600, seed=8)
    model_server.configure(latency_ms=100)
    # No rate limit in the way: the session's 32 calls are in flight when the interrupt lands.
    env = run_env(
        tmp_path, landing_root, database, model_server, COST_PIPELINE_RPM="1000000", COST_PIPELINE_TPM="1000000000"
    )
    run = run_day(env, tmp_path)
    deadline = time.monotonic() + 120
    # Answered (and so billed) requests, not requests received: up to max_concurrency of those are still in flight.
    while model_server.stats().get("ok", 0) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    at_the_signal = model_server.stats()["requests"]
    os.killpg(run.pid, signal.SIGINT)
    output = run.communicate(timeout=120)[0]
    assert run.returncode != 0 and "interrupt" in output.lower(), output[-3000:]
    served = {r["response_id"] for r in model_server.billing()}
    # It stops calling: beyond the calls in flight, only the few sent while the signal travels (before the event
    # loop had its own thread, the step ran its 512 conversations in flight to their end: about 730 of 900 calls).
    assert 150 <= len(served) <= at_the_signal + 64, (at_the_signal, len(served))
    assert not list(spool_folder(database).glob("*.jsonl")), "the terminated run loaded its own spool"
    ledger_ids = billed_response_ids(database)
    cut_off = query(database, "SELECT count(*) FROM llm_attempts WHERE billed IS NULL AND NOT recovered")[0][0]
    assert ledger_ids <= served
    assert len(served - ledger_ids) <= cut_off <= 32, (len(served - ledger_ids), cut_off)
    assert cut_off >= 8, "the interrupt landed with calls in flight (else this test proves nothing)"
    assert query(database, "SELECT count(*) FROM llm_attempts WHERE recovered")[0][0] == 0
    assert not query(database, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'cleaned_turns'")[0][0], (
        "a terminated run commits nothing"
    )


@pytest.mark.slow
def test_partial_run_config_keeps_the_key_base_url_and_database_the_environment_set(
    tmp_path, landing_root, database, model_server
):
    generate(landing_root, DAY, days=1, turns_per_day=30, seed=9)
    fake_key = "AIzaFAKE-partial-config-key-000"
    env = run_env(tmp_path, landing_root, database, model_server, GEMINI_API_KEY=fake_key)
    run = run_day(
        env,
        tmp_path,
        "--config-json",
        json.dumps({"resources": {"gemini": {"config": {"limits": {"max_concurrency": 8}}}}}),
    )
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output[-3000:]
    stats = model_server.stats()
    assert stats["requests"] > 0 and stats[f"key:{key_fingerprint(fake_key)}"] == stats["with_api_key"]
    assert f"Gemini calls go to {model_server.url} (base URL)" in output
    assert "local Gemini-compatible server" not in output
    assert query(database, "SELECT count(*) > 0 FROM llm_response_cache") == [(True,)]
    assert query(database, "SELECT DISTINCT endpoint FROM llm_attempts") == [(model_server.url,)]
    assert not (tmp_path / "data").exists(), "nothing written under the working directory"
    assert fake_key not in output


def test_answers_from_one_endpoint_are_never_served_as_cache_hits_for_another(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=30, seed=12)
    materialize_day(DAY, landing_root, database, model_server)
    first = model_server.stats()["requests"]
    materialize_day(DAY, landing_root, database, model_server, gemini={"endpoint": {"use_local_server": True}})
    assert model_server.stats()["requests"] == first, "the second run went to its own local server"
    endpoints = dict(query(database, "SELECT endpoint, count(*) FROM llm_calls WHERE NOT cache_hit GROUP BY 1"))
    assert set(endpoints) == {"local-server"} and sum(endpoints.values()) > 0
    assert {e for (e,) in query(database, "SELECT DISTINCT endpoint FROM llm_attempts")} == {
        "local-server",
        model_server.url,
    }


def test_a_rotated_spool_hands_attempts_in_flight_to_the_next_file(tmp_path):
    from cost_pipeline.gemini.attempts import Attempt
    from cost_pipeline.gemini.usage import Usage
    from cost_pipeline.money.ledger import AttemptSpool

    spool = AttemptSpool(tmp_path, "run")
    done, flying = (
        Attempt(i, "c", "run", str(DAY), "e", "t", "clean", "m", "local-server", "h", 1, 1.0) for i in ("a", "b")
    )
    for attempt in (done, flying):
        spool.sent(attempt)
    done.outcome, done.billed, done.usage, done.http_status = "accepted", True, Usage(input_tokens=5), 200
    spool.done(done)
    finished = spool.rotate()
    flying.outcome, flying.billed, flying.http_status = "error", False, 503
    spool.done(flying)
    spool.close()
    first = attempt_rows(finished.read_text().splitlines())
    second = attempt_rows(spool.path.read_text().splitlines())
    assert [(r["attempt_id"], r["outcome"]) for r in first] == [("a", "accepted")]
    assert [(r["attempt_id"], r["outcome"], r["http_status"]) for r in second] == [("b", "error", 503)]


def test_a_keyed_ledger_and_cache_lose_their_index_not_a_row_and_a_load_twice_records_once(tmp_path):
    """Tables from before the PRIMARY KEY was dropped are rebuilt on first write with every row; an attempt loaded
    twice (or first as interrupted, then with its outcome) has one row; an interrupted one gives way to its outcome."""
    import duckdb

    from cost_pipeline.gemini.attempts import Attempt
    from cost_pipeline.gemini.cache import DDL as CACHE_DDL
    from cost_pipeline.gemini.cache import TABLE as CACHE
    from cost_pipeline.gemini.cache import ResponseCache
    from cost_pipeline.gemini.usage import Usage
    from cost_pipeline.money.ledger import COLUMNS, TABLE, AttemptSpool, load_spools, spool_folder
    from cost_pipeline.money.pricing import PriceBook

    database = tmp_path / "old.duckdb"
    with duckdb.connect(str(database)) as connection:  # the layout this project wrote before
        connection.execute(
            f"CREATE TABLE {TABLE} ({', '.join(f'{c.name} {c.sql_type}' for c in COLUMNS)})".replace(
                "attempt_id VARCHAR NOT NULL", "attempt_id VARCHAR PRIMARY KEY"
            )
        )
        connection.execute(
            f"INSERT INTO {TABLE} (attempt_id, partition_date, outcome) VALUES ('old', ?, 'accepted')", [DAY]
        )
        connection.execute(CACHE_DDL.replace("request_hash VARCHAR NOT NULL", "request_hash VARCHAR PRIMARY KEY"))
        connection.execute(
            f"INSERT INTO {CACHE} VALUES ('h-old', 't', 'clean', 'm', '{{}}', 1, 1, 0, 0, 0, 2, "
            "'reported', now(), NULL)"
        )

    def spool_of(*attempts_and_outcomes) -> Path:
        spool = AttemptSpool(spool_folder(database), "run")
        for attempt, outcome in attempts_and_outcomes:
            spool.sent(attempt)
            if outcome:
                attempt.outcome, attempt.billed, attempt.http_status = outcome, True, 200
                attempt.usage = Usage(input_tokens=5, output_tokens=2, total_tokens=7)
                spool.done(attempt)
        spool.close()
        return spool.path

    def attempt(attempt_id: str) -> Attempt:
        return Attempt(
            attempt_id,
            "c",
            "run",
            str(DAY),
            "e",
            "t",
            "clean",
            "gemini-2.5-flash-lite",
            "local-server",
            "h",
            1,
            1_764_000_000.0,
        )

    book = PriceBook()
    assert load_spools(database, book, only=spool_of((attempt("a"), "accepted"), (attempt("b"), None))) == 2
    assert load_spools(database, book, only=spool_of((attempt("a"), "accepted"))) == 0  # loaded twice: once
    assert load_spools(database, book, only=spool_of((attempt("b"), "accepted"))) == 1  # its outcome replaces it
    ResponseCache(database).write(
        [
            {
                "request_hash": "h-new",
                "text_hash": "t",
                "stage": "clean",
                "model": "m",
                "result_json": "{}",
                "created_at": datetime.now(timezone.utc),
            }
        ]
    )
    with duckdb.connect(str(database), read_only=True) as connection:
        keys = connection.execute(
            "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
        ).fetchall()
        ledger = connection.execute(f"SELECT attempt_id, outcome FROM {TABLE} ORDER BY 1").fetchall()
        cache = connection.execute(f"SELECT request_hash FROM {CACHE} ORDER BY 1").fetchall()
    assert keys == [] and ledger == [("a", "accepted"), ("b", "accepted"), ("old", "accepted")]
    assert cache == [("h-new",), ("h-old",)]
