"""A corpus of bad landing input: every line is quarantined with its reason or accepted exactly; nothing else is
lost."""

import json
import shutil
from pathlib import Path

import duckdb

from .conftest import materialize_day

CORPUS = Path(__file__).parent / "fixtures" / "bad_landing"
DAY = "2026-11-01"


def test_every_line_of_the_corpus_ends_where_it_should(tmp_path, database):
    landing = tmp_path / "landing"
    shutil.copytree(CORPUS, landing)
    expected = json.loads((CORPUS / "expected.json").read_text())
    result = materialize_day(DAY, landing, database)
    with duckdb.connect(str(database), read_only=True) as connection:
        kept = connection.execute("SELECT source_file, line_number FROM raw_turns").fetchall()
        quarantined = connection.execute(
            "SELECT source_file, line_number, reason_code, reason, length(raw_content) FROM quarantined_turns"
        ).fetchall()
        nasty = connection.execute(
            "SELECT evaluation_id, conversation_id, turn_id FROM raw_turns WHERE source_file = 'g_sql.jsonl' "
            "ORDER BY line_number"
        ).fetchall()
        unicode_texts = connection.execute(
            "SELECT text FROM raw_turns WHERE source_file = 'f_utf8.jsonl' ORDER BY line_number"
        ).fetchall()
    outcome = {f"{f}:{n}": "ok" for f, n in kept} | {f"{f}:{n}": code for f, n, code, _, _ in quarantined}
    assert outcome == expected
    assert all(reason and length <= 501 for *_, reason, length in quarantined)
    assert nasty[0][:2] == ("eval'; DROP TABLE raw_turns; --", "c\"1\\' OR 1=1")
    assert nasty[1][2] == "id'); DELETE FROM raw_turns; --"
    assert unicode_texts == [("Café, naïve — 日本語 🎉 ok",), ("🎉 escaped",)]
    metadata = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("landed_turns")}
    assert metadata["raw_turns"]["rows"].value == list(expected.values()).count("ok")
    assert metadata["raw_turns"]["files"].value == 10
