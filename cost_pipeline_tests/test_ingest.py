"""raw_turns and quarantined_turns, materialized by Dagster from generated landing days."""

from datetime import date

import dagster as dg
import duckdb

from cost_pipeline.ingest.synthetic import MALFORMED_KINDS, generate

from .conftest import materialize_day

DAY1, DAY2 = date(2026, 11, 1), date(2026, 11, 2)


def partition_counts(database, table: str) -> dict[str, int]:
    with duckdb.connect(str(database), read_only=True) as connection:
        return {
            str(day): n
            for day, n in connection.execute(f"SELECT partition_date, count(*) FROM {table} GROUP BY 1").fetchall()
        }


def test_two_generated_days_land_with_exact_counts_and_metadata(landing_root, database):
    summaries = generate(landing_root, DAY1, days=2, turns_per_day=700, seed=3)
    results = [materialize_day(day.day, landing_root, database) for day in summaries]

    assert partition_counts(database, "raw_turns") == {str(s.day): s.good_lines for s in summaries}
    assert partition_counts(database, "quarantined_turns") == {str(s.day): len(MALFORMED_KINDS) for s in summaries}
    with duckdb.connect(str(database), read_only=True) as connection:
        codes = connection.execute("SELECT DISTINCT reason_code FROM quarantined_turns ORDER BY 1").fetchall()
    assert [code for (code,) in codes] == sorted(MALFORMED_KINDS)

    metadata = results[0].asset_materializations_for_node("landed_turns")[0].metadata
    by_asset = {m.asset_key.path[-1]: m.metadata for m in results[0].asset_materializations_for_node("landed_turns")}
    assert by_asset["raw_turns"]["rows"].value == summaries[0].good_lines
    assert by_asset["raw_turns"]["quarantined"].value == len(MALFORMED_KINDS)
    assert by_asset["raw_turns"]["conversations"].value == summaries[0].conversations
    assert by_asset["raw_turns"]["evaluations"].value == 5
    assert by_asset["quarantined_turns"]["reasons"].value == {kind: 1 for kind in MALFORMED_KINDS}
    assert metadata["dagster/row_count"].value in (summaries[0].good_lines, len(MALFORMED_KINDS))


def test_rematerializing_a_partition_leaves_exactly_the_same_rows(landing_root, database):
    generate(landing_root, DAY1, days=2, turns_per_day=300, seed=5)
    materialize_day(DAY1, landing_root, database)
    materialize_day(DAY2, landing_root, database)
    query = "SELECT * EXCLUDE (run_id) FROM raw_turns ORDER BY partition_date, turn_id"
    with duckdb.connect(str(database), read_only=True) as connection:
        before = connection.execute(query).df()
    second = materialize_day(DAY1, landing_root, database)
    with duckdb.connect(str(database), read_only=True) as connection:
        after = connection.execute(query).df()
        runs = connection.execute(
            "SELECT partition_date, count(DISTINCT run_id), min(run_id) FROM raw_turns GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert len(after) == 600
    assert before.equals(after)
    assert runs[0][1:] == (1, second.run_id)


def test_bad_lines_beside_good_ones_in_a_dagster_run(landing_root, database):
    folder = landing_root / str(DAY1)
    folder.mkdir()
    good = (
        '{"evaluation_id":"e","conversation_id":"c","turn_index":%d,"speaker":"user","text":"hi %d",'
        '"created_at":"2026-11-01T09:00:00"}'
    )
    (folder / "mixed.jsonl").write_bytes(
        "\n".join([good % (0, 0), "{broken", good % (1, 1), '{"evaluation_id":"e"}', good % (2, 2)]).encode()
        + b"\n\xff\n"
    )
    materialize_day(DAY1, landing_root, database)
    with duckdb.connect(str(database), read_only=True) as connection:
        kept = connection.execute("SELECT turn_index, speaker FROM raw_turns ORDER BY 1").fetchall()
        bad = connection.execute("SELECT line_number, reason_code FROM quarantined_turns ORDER BY 1").fetchall()
    assert kept == [(0, "User"), (1, "User"), (2, "User")]
    assert bad == [(2, "not_json"), (4, "missing_field"), (6, "invalid_utf8")]


def test_a_day_launched_by_hand_without_landing_files_fails_with_a_one_line_reason(landing_root, database):
    result = materialize_day("2026-11-09", landing_root, database, raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("No landing files for 2026-11-09: expected ") and "\n" not in description
    assert "late_landing_sensor" in description
    assert (
        not database.exists()
        or not duckdb.connect(str(database), read_only=True)
        .execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'raw_turns'")
        .fetchone()[0]
    )


def test_a_day_without_landing_files_in_a_backfill_is_written_empty_and_stays_green(
    landing_root, database, model_server
):
    (landing_root / "2026-11-09").mkdir(parents=True)  # a folder with no *.jsonl is nothing landed, too
    result = materialize_day("2026-11-09", landing_root, database, model_server, tags={"dagster/backfill": "bf1"})
    assert result.success  # Dagster counts an asset backfill's unmaterialized days as failed: so none is left so
    assert not [e for e in result.all_events if e.event_type_value == "STEP_SKIPPED"]
    (raw,) = [m for m in result.asset_materializations_for_node("landed_turns") if m.asset_key.path == ["raw_turns"]]
    assert raw.metadata["rows"].value == 0 and raw.metadata["landing"].value.startswith(
        "No landing files for 2026-11-09"
    )
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM raw_turns").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM daily_cost_rollup").fetchone() == (0,)


def test_a_landed_day_commits_raw_and_quarantined_turns_as_one_batch(landing_root, database):
    generate(landing_root, DAY1, days=1, turns_per_day=30, seed=1)
    with dg.instance_for_test() as instance:
        result = materialize_day(DAY1, landing_root, database, instance=instance)
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    with duckdb.connect(str(database), read_only=True) as connection:
        runs = connection.execute(
            "SELECT DISTINCT run_id FROM raw_turns UNION SELECT DISTINCT run_id FROM quarantined_turns"
        ).fetchall()
    assert runs == [(result.run_id,)]
    assert any(
        message.startswith("committed quarantined_turns (") and "raw_turns (30 rows)" in message for message in messages
    ), "both tables in one transaction"


def test_the_landing_limit_is_run_config(landing_root, database):
    generate(landing_root, DAY1, days=1, turns_per_day=200, seed=1)
    materialize_day(
        DAY1,
        landing_root,
        database,
        run_config={"resources": {"landing": {"config": {"root": str(landing_root), "max_text_chars": 40}}}},
    )
    with duckdb.connect(str(database), read_only=True) as connection:
        too_long = connection.execute(
            "SELECT count(*) FROM quarantined_turns WHERE reason_code = 'text_too_long'"
        ).fetchone()[0]
        longest = connection.execute("SELECT max(length(text)) FROM raw_turns").fetchone()[0]
    assert too_long > 1
    assert longest <= 40
