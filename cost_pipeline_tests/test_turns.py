"""The Gemini stage in real Dagster runs: the real google-genai client against the shipped server, real DuckDB."""

import asyncio
import json
from datetime import date
from decimal import Decimal

import dagster as dg
import duckdb
import pytest

from cost_pipeline.defs import io_manager as io_manager_module
from cost_pipeline.defs.gemini import assets as turns_module
from cost_pipeline.ingest.synthetic import generate

from .conftest import materialize_day

DAY = date(2026, 11, 1)
SECRET = "AIzaFAKE-test-key-0123456789-never-to-be-seen"


def query(database, sql: str, params=None):
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql, params or []).fetchall()


def write_conversation(landing_root, texts: list[tuple[str, str]], conversation="c1", evaluation="e1", name="a.jsonl"):
    folder = landing_root / str(DAY)
    folder.mkdir(exist_ok=True)
    lines = [
        json.dumps(
            {
                "evaluation_id": evaluation,
                "conversation_id": conversation,
                "turn_index": i,
                "speaker": speaker,
                "text": text,
                "created_at": f"{DAY}T10:00:{i:02d}Z",
            }
        )
        for i, (speaker, text) in enumerate(texts)
    ]
    with open(folder / name, "a") as handle:
        handle.write("\n".join(lines) + "\n")


def test_usage_lands_exactly_as_the_server_reported_it(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=120, seed=21)
    materialize_day(
        DAY, landing_root, database, model_server, gemini={"models": {"function_model": "gemini-2.5-flash"}}
    )
    fields = (
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
        "toolUsePromptTokenCount",
        "totalTokenCount",
    )
    reported: dict[tuple, list] = {}
    for record in model_server.requests():
        body = record["body"]
        key = ("function" if body.get("tools") else "clean", body["contents"][-1]["parts"][-1]["text"])
        reported.setdefault(key, []).append([record["usageMetadata"].get(k, 0) for k in fields])
    rows = query(
        database,
        """
        SELECT c.stage, CASE WHEN c.stage = 'clean' THEN t.raw_text ELSE t.cleaned_text END,
               c.input_tokens, c.output_tokens,
               c.thinking_tokens, c.cached_tokens, c.tool_prompt_tokens, c.total_tokens, c.usage_source
        FROM llm_calls c JOIN cleaned_turns t USING (turn_id) WHERE NOT c.cache_hit""",
    )
    assert len(rows) > 100
    for stage, text, *tokens, source in rows:
        assert tokens in reported[(stage, text)] and source == "reported"
    # Every reported usage is stored once, and nothing else is: the multisets are equal.
    assert sorted(tokens for _, _, *tokens, _ in rows) == sorted(u for usages in reported.values() for u in usages)
    thinking = sum(tokens[2] for _, _, *tokens, _ in rows)
    cached = sum(tokens[3] for _, _, *tokens, _ in rows)
    assert thinking > 0 and cached > 0, "the day should exercise thinking and implicit-cache tokens"


def test_missing_usage_is_estimated_flagged_and_counted(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=40, seed=2)
    model_server.configure(rate_missing_usage=1.0)
    result = materialize_day(DAY, landing_root, database, model_server)
    sources = dict(query(database, "SELECT usage_source, count(*) FROM llm_calls WHERE NOT cache_hit GROUP BY 1"))
    assert set(sources) == {"estimated"}
    assert query(database, "SELECT min(input_tokens), min(output_tokens) FROM llm_calls WHERE NOT cache_hit")[0] > (
        0,
        0,
    )
    metadata = {
        m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("turns_through_gemini")
    }
    assert metadata["llm_calls"]["estimated_usage_calls"].value == sources["estimated"]


def test_the_stage_says_how_much_of_the_day_its_event_loop_spent_on_a_core(landing_root, database, model_server):
    """Against a slow endpoint the loop mostly waits: its CPU seconds (its own thread's, not the step's main thread,
    which only waits for it) are well under the elapsed time, and the time it waited for a core is reported beside."""
    generate(landing_root, DAY, days=1, turns_per_day=40, seed=3)
    model_server.configure(latency_ms=150)
    result = materialize_day(DAY, landing_root, database, model_server)
    metadata = {
        m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("turns_through_gemini")
    }
    calls = metadata["llm_calls"]
    on_core, waited, elapsed = (calls[name].value for name in ("event_loop_cpu_s", "event_loop_waited_s", "elapsed_s"))
    assert 0.01 < on_core < elapsed / 2, (on_core, elapsed)
    assert 0 <= waited < elapsed


def test_the_stage_sends_the_json_the_sdks_typed_contents_send(model_server):
    """The stage hands the SDK its contents as plain dicts (cheaper for the SDK to validate, `request_contents`): each
    request, a reminder after a rejection included, reaches the server as the same JSON, key order included, as
    `types.Content` objects send; and a batch job's request is built the same either way."""
    from google import genai
    from google.genai import types

    from cost_pipeline.gemini.batch.files import rest_request
    from cost_pipeline.gemini.prompts import cleaning_request, function_request
    from cost_pipeline.gemini.sdk_request import content_config, request_contents

    cleaning = cleaning_request(
        "gemini-2.5-flash-lite",
        "User",
        "um so I I want the thing",
        [("User", "Hello there."), ("Assistant", "Hi, how can I help?")],
        0,
    )
    requests = [
        cleaning,
        cleaning.with_reminder("cleaning answer is not JSON", 2),
        function_request("gemini-2.5-flash", "Order two coffees from Starbucks.", None),
    ]
    client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=model_server.url))

    def typed(request):
        return [
            types.Content(role="user", parts=[types.Part(text=part) for part in parts]) for parts in request.contents
        ]

    async def send_both_ways():
        for request in requests:
            for contents in (request_contents(request), typed(request)):
                await client.aio.models.generate_content(
                    model=request.model, contents=contents, config=content_config(request)
                )
        await client.aio.aclose()

    asyncio.run(send_both_ways())
    bodies = [record["body"] for record in model_server.requests()]
    assert len(bodies) == 2 * len(requests)
    for ours, sdk_objects in zip(bodies[::2], bodies[1::2]):
        assert json.dumps(ours) == json.dumps(sdk_objects)
    assert bodies[2]["contents"][-1]["parts"][0]["text"].startswith("Your previous answer was rejected")
    assert bodies[4]["tools"] and bodies[0]["generationConfig"]["thinkingConfig"]
    for request in requests:  # batch mode: the config as `batch.py` inlines it, without automatic function calling
        config = content_config(request).model_copy(update={"automatic_function_calling": None})
        ours, sdk_objects = (
            json.dumps(rest_request(client, {"contents": contents, "config": config}))
            for contents in (request_contents(request), typed(request))
        )
        assert ours == sdk_objects and request.contents[-1][-1] in ours


def test_the_second_turn_is_cleaned_with_the_first_turns_cleaned_text(landing_root, database, model_server):
    write_conversation(
        landing_root,
        [
            ("User", "um hello hello there"),
            ("Assistant", "Hi, how can I help?"),
            ("User", "uh order two coffees from Starbucks"),
        ],
    )
    materialize_day(DAY, landing_root, database, model_server)
    cleaning = [r["body"] for r in model_server.requests() if not r["body"].get("tools")]
    second = next(b for b in cleaning if b["contents"][-1]["parts"][-1]["text"] == "Hi, how can I help?")
    third = next(b for b in cleaning if b["contents"][-1]["parts"][-1]["text"].startswith("uh order"))
    assert "User: Hello there." in second["contents"][0]["parts"][0]["text"]
    assert "User: Hello there.\nAssistant: Hi, how can I help?" in third["contents"][0]["parts"][0]["text"]
    assert query(database, "SELECT function_name, arguments FROM function_calls ORDER BY turn_index") == [
        (None, None),
        ("place_order", '{"item": "coffees", "quantity": 2, "store": "Starbucks"}'),
    ]


def test_repeated_texts_hit_the_cache_and_a_second_run_makes_no_api_call(landing_root, database, model_server):
    (summary,) = generate(landing_root, DAY, days=1, turns_per_day=300, seed=9)
    materialize_day(DAY, landing_root, database, model_server)
    first_requests = model_server.stats()["requests"]
    calls, hits = query(database, "SELECT count(*), count(*) FILTER (cache_hit) FROM llm_calls")[0]
    assert hits > 0 and first_requests == calls - hits
    saved = query(database, "SELECT min(saved_input_tokens), max(input_tokens) FROM llm_calls WHERE cache_hit")[0]
    assert saved[0] > 0 and saved[1] == 0

    model_server.reset()
    materialize_day(DAY, landing_root, database, model_server)
    assert model_server.stats().get("requests", 0) == 0
    assert query(database, "SELECT count(*), count(*) FILTER (cache_hit) FROM llm_calls")[0] == (calls, calls)

    # In small chunks, each loads the answers its own turns can use, not every answer of a text that recurs all day.
    result = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        run_config={"ops": {"turns_through_gemini": {"config": {"chunk_turns": 32}}}},
    )
    metadata = {
        m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("turns_through_gemini")
    }
    assert 0 < metadata["llm_calls"]["cache_entries_loaded"].value <= calls


def test_transient_faults_are_retried_and_every_turn_has_a_row(landing_root, database, model_server):
    (summary,) = generate(landing_root, DAY, days=1, turns_per_day=200, seed=4)
    model_server.configure(rate_429=0.1, rate_503=0.1, retry_delay_s=0.01, seed=3)
    result = materialize_day(
        DAY, landing_root, database, model_server, gemini={"cache": {"enabled": False}, "retries": {"max_attempts": 8}}
    )
    assert result.success
    assert query(database, "SELECT count(*), count(*) FILTER (status = 'ok') FROM cleaned_turns")[0] == (200, 200)
    assert query(database, "SELECT count(*) FROM llm_calls WHERE attempts > 1")[0][0] > 10
    stats = model_server.stats()
    retries = query(database, "SELECT sum(attempts - 1) FROM llm_calls WHERE NOT cache_hit")[0][0]
    assert retries == stats["fault_429"] + stats["fault_503"]


def test_a_permanent_error_gives_failed_rows_and_the_key_is_never_stored_or_logged(
    landing_root, database, model_server, tmp_path, capfd
):
    write_conversation(landing_root, [("User", "um search the web for cheap flights"), ("Assistant", "Sure.")])
    model_server.configure(rate_400=1.0)
    instance_home = tmp_path / "dagster_home"
    instance_home.mkdir()
    (instance_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.instance_for_test(temp_dir=str(instance_home)) as instance:
        result = materialize_day(
            DAY,
            landing_root,
            database,
            model_server,
            instance=instance,
            gemini={"endpoint": {"api_key": SECRET}},
            run_config={"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}},
        )
        events = "".join(str(e) for e in instance.all_logs(result.run_id))
    assert result.success
    rows = query(database, "SELECT status, attempts, error FROM llm_calls")
    assert [(status, attempts) for status, attempts, _ in rows] == [("failed", 1), ("failed", 1)]
    assert all("400" in error and "INVALID_ARGUMENT" in error for _, _, error in rows)
    assert query(database, "SELECT status, cleaned_text FROM cleaned_turns") == [("failed", None), ("failed", None)]
    assert SECRET.encode() not in database.read_bytes()
    assert SECRET not in events
    assert all(SECRET.encode() not in p.read_bytes() for p in instance_home.rglob("*") if p.is_file())
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err


def test_too_many_failures_fail_the_run_and_write_nothing(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=30, seed=8)
    model_server.configure(rate_500=1.0)
    result = materialize_day(
        DAY, landing_root, database, model_server, gemini={"retries": {"max_attempts": 2}}, raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("turns_through_gemini")
    assert "over the limit of 5%" in failure.error.message
    assert query(database, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'llm_calls'")[0][0] == 0


@pytest.mark.parametrize("breakage", ["after_cleaning", "during_commit"])
def test_a_crash_before_the_batch_commits_keeps_all_three_tables(
    landing_root, database, model_server, monkeypatch, breakage
):
    generate(landing_root, DAY, days=1, turns_per_day=60, seed=12)
    first = materialize_day(DAY, landing_root, database, model_server)

    def state():
        return [
            query(database, f"SELECT count(*), min(run_id), max(run_id) FROM {t}")[0]
            for t in ("cleaned_turns", "function_calls", "llm_calls")
        ]

    before = state()
    assert {run for _, run, _ in before} == {first.run_id}

    def explode(*args, **kwargs):
        raise RuntimeError(f"injected {breakage}")

    if breakage == "after_cleaning":
        monkeypatch.setattr(turns_module, "_call_metadata", explode)
    else:
        original = io_manager_module.replace_partitions
        monkeypatch.setattr(
            io_manager_module,
            "replace_partitions",
            lambda connection, writes: explode() if len(writes) == 3 else original(connection, writes),
        )
    generate(landing_root, DAY, days=1, turns_per_day=90, seed=13)
    failed = materialize_day(DAY, landing_root, database, model_server, raise_on_error=False)
    assert not failed.success
    assert state() == before


def test_answers_slower_than_the_timeout_are_retried(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=30, seed=5)
    model_server.configure(rate_slow=0.3, slow_s=3.0, seed=1)
    result = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        gemini={"retries": {"timeout_s": 0.5, "max_attempts": 10}, "cache": {"enabled": False}},
    )
    assert result.success
    assert query(database, "SELECT count(*) FILTER (status = 'ok'), count(*) FROM cleaned_turns")[0] == (30, 30)
    timed_out = model_server.stats()["fault_slow"]
    assert timed_out > 0
    assert query(database, "SELECT sum(attempts - 1) FROM llm_calls")[0][0] == timed_out


def test_thirty_percent_faults_of_every_kind_lose_no_turn(landing_root, database, model_server):
    (summary,) = generate(landing_root, DAY, days=1, turns_per_day=150, seed=31)
    model_server.configure(
        rate_429=0.1,
        rate_500=0.05,
        rate_503=0.05,
        rate_slow=0.05,
        slow_s=2.0,
        rate_truncated=0.05,
        retry_delay_s=0.01,
        seed=5,
    )
    result = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        gemini={"retries": {"timeout_s": 0.4, "max_attempts": 3}, "cache": {"enabled": False}},
        run_config={"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}},
    )
    assert result.success
    stats = model_server.stats()
    assert all(stats.get(f"fault_{kind}", 0) > 0 for kind in ("429", "500", "503", "slow", "truncated"))
    raw = query(database, "SELECT turn_id FROM raw_turns")
    cleaned = query(database, "SELECT turn_id, status, error FROM cleaned_turns")
    assert sorted(t for (t,) in raw) == sorted(t for t, _, _ in cleaned)
    assert all(status == "ok" or (status == "failed" and error) for _, status, error in cleaned)
    users_ok = query(database, "SELECT count(*) FROM cleaned_turns WHERE speaker = 'User' AND status = 'ok'")[0][0]
    assert query(database, "SELECT count(*) FROM function_calls")[0][0] == users_ok
    calls = query(
        database,
        "SELECT count(*), count(*) FILTER (attempts > 1), count(*) FILTER (status = 'failed' AND error IS "
        "NULL) FROM llm_calls",
    )[0]
    assert calls[0] == len(cleaned) + users_ok and calls[1] > 0 and calls[2] == 0


def test_a_day_with_no_valid_turn_writes_empty_tables(landing_root, database, model_server):
    folder = landing_root / str(DAY)
    folder.mkdir()
    (folder / "bad.jsonl").write_text('{"broken\n{"evaluation_id": "e"}\n')
    result = materialize_day(DAY, landing_root, database, model_server)
    assert result.success
    counts = [
        query(database, f"SELECT count(*) FROM {t}")[0][0]
        for t in ("raw_turns", "quarantined_turns", "cleaned_turns", "function_calls", "llm_calls")
    ]
    assert counts == [0, 2, 0, 0, 0]
    assert model_server.stats().get("requests", 0) == 0


def test_progress_says_cost_so_far_rate_and_eta_in_counts_that_add_up(landing_root, database, model_server):
    import re

    generate(landing_root, DAY, days=1, turns_per_day=300, seed=8)
    model_server.configure(latency_ms=20, rate_400=0.02, seed=8)
    config = {"progress_every": 100, "progress_every_s": 0.5, "checkpoint_every_s": 0.5, "max_failure_share": 1.0}
    with dg.instance_for_test() as instance:
        result = materialize_day(
            DAY,
            landing_root,
            database,
            model_server,
            instance=instance,
            run_config={"ops": {"turns_through_gemini": {"config": config}}},
        )
        lines = [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if " turns" in e.user_message and " calls = " in e.user_message
        ]
    pattern = re.compile(
        r"(\d+)/300 turns \(\d+%\) in \S+, [\d.]+ turns/s(, ETA \S+)?; (\d+) calls = (\d+) from the cache "
        r"\+ (\d+) answered by Gemini \+ (\d+) failed \+ (\d+) in flight, [\d.]+ calls/s; (\d+) HTTP attempts "
        r"\((\d+) retries\); billed so far \$(\d+\.\d{6}) \(as of the last checkpoint\)$"
    )
    parsed = [pattern.match(line) for line in lines]
    assert lines and all(parsed), lines[:3]
    for match in parsed:
        calls, hits, answered, failed, in_flight = (int(match.group(i)) for i in (3, 4, 5, 6, 7))
        assert calls == hits + answered + failed + in_flight
    # Every 100 turns (a timer line may land on the same count, so as a set), and the timer in between.
    assert {100, 200, 300} <= {int(m.group(1)) for m in parsed}
    assert len(parsed) > 3, "the timer logs between the every-N-turns lines"
    final = next(m for m in parsed if int(m.group(1)) == 300)
    ok, failed_calls = query(
        database,
        "SELECT count(*) FILTER (WHERE status = 'ok' AND NOT cache_hit), "
        "count(*) FILTER (WHERE status = 'failed') FROM llm_calls",
    )[0]
    # The last turn's line: every non-cache call of the day has been made (a last decision may be finishing).
    assert int(final.group(5)) + int(final.group(6)) + int(final.group(7)) == ok + failed_calls
    assert final.group(2) is None  # nothing left: no ETA
    assert any(float(m.group(10)) > 0 for m in parsed), "spend so far rises as checkpoints land"


def test_llm_calls_metadata_leads_with_cost_and_names_the_models(landing_root, database, model_server):
    generate(landing_root, DAY, days=1, turns_per_day=60, seed=9)
    result = materialize_day(
        DAY, landing_root, database, model_server, gemini={"models": {"function_model": "gemini-2.5-flash"}}
    )
    metadata = next(
        m
        for m in result.asset_materializations_for_node("turns_through_gemini")
        if m.asset_key == dg.AssetKey("llm_calls")
    ).metadata
    (total,) = query(database, "SELECT sum(total_cost_usd)::VARCHAR FROM llm_calls")[0]
    assert list(metadata)[:2] == ["cost", "saved"]
    assert metadata["cost"].value == f"${Decimal(total):,.6f}"
    assert metadata["models"].value == "gemini-2.5-flash, gemini-2.5-flash-lite"
