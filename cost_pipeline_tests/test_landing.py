"""Validation rules for landing lines: every bad kind is caught with its reason, nothing good is lost."""

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cost_pipeline.ingest.landing import LandingFolderMissing, derive_turn_id, read_landing_day

GOOD = {
    "evaluation_id": "eval-a",
    "conversation_id": "conv-1",
    "turn_index": 0,
    "speaker": "User",
    "text": "um hello there",
    "created_at": "2026-11-01T10:00:00Z",
}


def line(**changes) -> bytes:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def write_day(folder: Path, *lines: bytes, name: str = "a.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\n".join(lines) + b"\n")
    return folder


BAD_LINES = [
    ("not_json", b'{"evaluation_id": "eval-a", "text": ', "not valid JSON"),
    ("not_object", b'["a", "list"]', "expected a JSON object, got array"),
    ("missing_field", line(text=...), "missing field(s): text"),
    ("missing_field", line(created_at=None), "missing field(s): created_at"),
    ("wrong_type", line(turn_index="3"), "turn_index must be an integer, got string"),
    ("wrong_type", line(turn_index=True), "turn_index must be an integer, got boolean"),
    ("wrong_type", line(turn_index=1.5), "turn_index must be an integer, got number"),
    ("negative_index", line(turn_index=-1), "turn_index must be >= 0"),
    ("wrong_type", line(evaluation_id=7), "evaluation_id must be a string, got integer"),
    ("empty_id", line(conversation_id="  "), "conversation_id is empty"),
    ("wrong_type", line(text=["hi"]), "text must be a string, got array"),
    ("empty_text", line(text=" \t "), "text is empty"),
    ("text_too_long", line(text="x" * 101), "text has 101 characters, over the limit of 100"),
    ("invalid_utf8", line().replace(b"hello", b"hel\xfflo"), "invalid UTF-8 at byte"),
    ("unknown_speaker", line(speaker="Bot"), "unknown speaker 'Bot'"),
    ("wrong_type", line(speaker=1), "speaker must be a string"),
    ("bad_timestamp", line(created_at="yesterday"), "created_at 'yesterday' is not an ISO-8601 timestamp"),
    ("wrong_type", line(created_at=1700000000), "created_at must be an ISO-8601 string, got integer"),
    ("wrong_type", line(turn_id=""), "turn_id, when given, must be a non-empty string"),
]


@pytest.mark.parametrize("code,raw,reason", BAD_LINES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_LINES)])
def test_bad_line_is_quarantined_with_reason_and_neighbours_survive(tmp_path, code, raw, reason):
    folder = write_day(tmp_path / "2026-11-01", line(turn_index=0), raw, line(turn_index=1, speaker="Assistant"))
    day = read_landing_day(folder, max_text_chars=100)
    assert [t.turn_index for t in day.turns] == [0, 1]
    assert len(day.quarantined) == 1
    bad = day.quarantined[0]
    assert (bad.source_file, bad.line_number, bad.reason_code) == ("a.jsonl", 2, code)
    assert reason in bad.reason
    assert bad.raw_content == raw.decode("utf-8", errors="replace")


def test_duplicate_turn_id_keeps_the_first_and_names_it(tmp_path):
    folder = write_day(
        tmp_path / "d",
        line(turn_id="t-1", turn_index=0),
        line(turn_id="t-1", turn_index=1, text="another"),
    )
    day = read_landing_day(folder)
    assert [t.text for t in day.turns] == ["um hello there"]
    (bad,) = day.quarantined
    assert bad.reason_code == "duplicate_turn_id"
    assert "first seen at a.jsonl:1" in bad.reason


def test_duplicate_position_across_files_is_quarantined(tmp_path):
    folder = write_day(tmp_path / "d", line(), name="a.jsonl")
    write_day(folder, line(turn_id="explicit"), name="b.jsonl")
    day = read_landing_day(folder)
    assert len(day.turns) == 1
    assert day.quarantined[0].reason_code in {"duplicate_turn", "duplicate_turn_id"}
    assert day.quarantined[0].source_file == "b.jsonl"


def test_speaker_is_case_insensitive_and_timestamps_become_utc(tmp_path):
    folder = write_day(
        tmp_path / "d",
        line(turn_index=0, speaker="user", created_at="2026-11-01T10:00:00"),
        line(turn_index=1, speaker="ASSISTANT", created_at="2026-11-01T12:00:00+02:00"),
    )
    first, second = read_landing_day(folder).turns
    assert (first.speaker, second.speaker) == ("User", "Assistant")
    assert first.created_at == datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
    assert second.created_at == datetime(2026, 11, 1, 10, tzinfo=timezone.utc)


def test_bom_crlf_and_blank_lines_are_tolerated(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + line(turn_index=0) + b"\r\n\r\n" + line(turn_index=1) + b"\r\n")
    day = read_landing_day(folder)
    assert [t.turn_index for t in day.turns] == [0, 1]
    assert day.quarantined == []
    assert day.turns[1].line_number == 3


def test_derived_turn_id_is_stable_and_distinct():
    assert derive_turn_id("e", "c", 1) == derive_turn_id("e", "c", 1)
    assert len({derive_turn_id("e", "c", 1), derive_turn_id("e", "c", 2), derive_turn_id("e", "c1", 1)}) == 3
    # No separator collision: ("a", "bc") and ("ab", "c") must not share an id.
    assert derive_turn_id("a", "bc", 0) != derive_turn_id("ab", "c", 0)


def test_given_turn_id_is_kept(tmp_path):
    (turn,) = read_landing_day(write_day(tmp_path / "d", line(turn_id="my-id"))).turns
    assert turn.turn_id == "my-id"


def test_missing_folder_is_a_named_error(tmp_path):
    with pytest.raises(LandingFolderMissing, match="2026-11-05"):
        read_landing_day(tmp_path / "2026-11-05")


def test_empty_folder_and_empty_file_give_an_empty_day(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "empty.jsonl").write_bytes(b"")
    day = read_landing_day(folder)
    assert (day.turns, day.quarantined, day.files) == ([], [], ["empty.jsonl"])
    assert list(day.turns_frame().columns)[0] == "turn_id"
