"""Reading and validating landing files: JSON Lines, one conversation turn a line.

Validation is per line and never aborts a file: a bad line becomes a quarantine record
with a readable reason, and every good line beside it survives. `LandingReader` streams
a day line by line, so memory does not grow with the day's size beyond the duplicate
check (a 16-byte digest per turn id and per position); `read_landing_day` collects a
small day into lists. No Dagster here, so the rules are tested directly.
"""

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

SPEAKERS = {"user": "User", "assistant": "Assistant"}
REQUIRED_FIELDS = ("evaluation_id", "conversation_id", "turn_index", "speaker", "text", "created_at")
DEFAULT_MAX_TEXT_CHARS = 20_000
RAW_CONTENT_LIMIT = 500
LANDED = "files landed"  # raw_turns' `landing` metadata for a day whose files were there (else: what was missing)

# A fixed namespace makes derived turn ids stable across runs, machines and versions.
TURN_ID_NAMESPACE = uuid.UUID("6f1c9a52-6f0e-4d8e-9a39-2f5c0f1f7a11")

TURN_COLUMNS = [
    "turn_id",
    "evaluation_id",
    "conversation_id",
    "turn_index",
    "speaker",
    "text",
    "created_at",
    "source_file",
    "line_number",
]
QUARANTINE_COLUMNS = ["source_file", "line_number", "reason_code", "reason", "raw_content"]


class LandingFolderMissing(FileNotFoundError):
    """The day's landing folder does not exist, so there is nothing to validate."""


class InvalidLine(ValueError):
    """A line that cannot become a turn: `code` names the rule, the message is the reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Turn:
    turn_id: str
    evaluation_id: str
    conversation_id: str
    turn_index: int
    speaker: str
    text: str
    created_at: datetime
    source_file: str
    line_number: int


@dataclass(frozen=True)
class QuarantinedLine:
    source_file: str
    line_number: int
    reason_code: str
    reason: str
    raw_content: str


@dataclass
class LandingDay:
    """Everything one landing folder held: good turns, quarantined lines, files read."""

    turns: list[Turn] = field(default_factory=list)
    quarantined: list[QuarantinedLine] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def turns_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([t.__dict__ for t in self.turns], columns=TURN_COLUMNS)
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame

    def quarantine_frame(self) -> pd.DataFrame:
        return pd.DataFrame([q.__dict__ for q in self.quarantined], columns=QUARANTINE_COLUMNS)


def derive_turn_id(evaluation_id: str, conversation_id: str, turn_index: int) -> str:
    """A stable id for a turn that arrived without one."""
    return str(uuid.uuid5(TURN_ID_NAMESPACE, json.dumps([evaluation_id, conversation_id, turn_index])))


def landing_folder(root: str | Path, day: date | str) -> Path:
    return Path(root) / (day if isinstance(day, str) else day.isoformat())


def read_landing_day(folder: Path, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> LandingDay:
    """Validate every `*.jsonl` file of one day's folder, in name order, into lists (small days)."""
    reader = LandingReader(folder, max_text_chars)
    day = LandingDay(files=reader.files)
    for item in reader:
        if isinstance(item, Turn):
            day.turns.append(item)
        else:
            day.quarantined.append(item)
    return day


class LandingReader:
    """One day's folder as a stream of `Turn`s and `QuarantinedLine`s, file by file in name order, line by line.

    A turn id, or an (evaluation, conversation, index) position, seen before in the day
    quarantines the later line, naming where the first one was.
    """

    def __init__(self, folder: Path, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
        if not folder.is_dir():
            raise LandingFolderMissing(f"landing folder {folder} does not exist")
        self.folder, self.max_text_chars = folder, max_text_chars
        self.files: list[str] = []
        # digest -> where first seen, packed as file index << 32 | line number
        self._seen_ids: dict[bytes, int] = {}
        self._seen_positions: dict[bytes, int] = {}

    def __iter__(self) -> Iterator["Turn | QuarantinedLine"]:
        for path in sorted(self.folder.glob("*.jsonl")):
            self.files.append(path.name)
            with path.open("rb") as handle:
                for line_number, raw in enumerate(handle, start=1):
                    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
                    if line_number == 1:
                        raw = raw.removeprefix(b"\xef\xbb\xbf")
                    if not raw.strip():
                        continue
                    try:
                        turn = parse_line(raw, path.name, line_number, self.max_text_chars)
                        self._reject_duplicate(turn, line_number)
                    except InvalidLine as bad:
                        yield QuarantinedLine(path.name, line_number, bad.code, str(bad), _preview(raw))
                        continue
                    yield turn

    def _reject_duplicate(self, turn: Turn, line_number: int) -> None:
        here = (len(self.files) - 1) << 32 | line_number
        id_key = _digest(turn.turn_id)
        position_key = _digest(f"{turn.evaluation_id}\x1f{turn.conversation_id}\x1f{turn.turn_index}")
        if id_key in self._seen_ids:
            raise InvalidLine(
                "duplicate_turn_id",
                f"duplicate turn_id {turn.turn_id[:80]!r} (first seen at {self._where(self._seen_ids[id_key])})",
            )
        if position_key in self._seen_positions:
            raise InvalidLine(
                "duplicate_turn",
                f"duplicate turn {turn.turn_index} of conversation {turn.conversation_id[:80]!r} "
                f"(first seen at {self._where(self._seen_positions[position_key])})",
            )
        self._seen_ids[id_key] = here
        self._seen_positions[position_key] = here

    def _where(self, packed: int) -> str:
        return f"{self.files[packed >> 32]}:{packed & 0xFFFFFFFF}"


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def parse_line(raw: bytes, source_file: str, line_number: int, max_text_chars: int) -> Turn:
    """One landing line to a `Turn`, or `InvalidLine` saying exactly what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidLine("invalid_utf8", f"invalid UTF-8 at byte {err.start}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidLine("not_json", f"not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(record, dict):
        raise InvalidLine("not_object", f"expected a JSON object, got {_json_type(record)}")
    missing = [name for name in REQUIRED_FIELDS if record.get(name) is None]
    if missing:
        raise InvalidLine("missing_field", f"missing field(s): {', '.join(missing)}")

    evaluation_id = _non_empty_string(record, "evaluation_id")
    conversation_id = _non_empty_string(record, "conversation_id")
    turn_index = record["turn_index"]
    if not isinstance(turn_index, int) or isinstance(turn_index, bool):
        raise InvalidLine("wrong_type", f"turn_index must be an integer, got {_json_type(turn_index)}")
    if turn_index < 0:
        raise InvalidLine("negative_index", f"turn_index must be >= 0, got {turn_index}")
    speaker = record["speaker"]
    if not isinstance(speaker, str):
        raise InvalidLine("wrong_type", f"speaker must be a string, got {_json_type(speaker)}")
    if speaker.strip().lower() not in SPEAKERS:
        raise InvalidLine("unknown_speaker", f"unknown speaker {speaker[:40]!r} (expected User or Assistant)")
    body = record["text"]
    if not isinstance(body, str):
        raise InvalidLine("wrong_type", f"text must be a string, got {_json_type(body)}")
    if not body.strip():
        raise InvalidLine("empty_text", "text is empty")
    if len(body) > max_text_chars:
        raise InvalidLine("text_too_long", f"text has {len(body)} characters, over the limit of {max_text_chars}")
    created_at = _utc_timestamp(record["created_at"])
    turn_id = record.get("turn_id")
    if turn_id is None:
        turn_id = derive_turn_id(evaluation_id, conversation_id, turn_index)
    elif not isinstance(turn_id, str) or not turn_id.strip():
        raise InvalidLine("wrong_type", "turn_id, when given, must be a non-empty string")

    return Turn(
        turn_id=turn_id,
        evaluation_id=evaluation_id,
        conversation_id=conversation_id,
        turn_index=turn_index,
        speaker=SPEAKERS[speaker.strip().lower()],
        text=body,
        created_at=created_at,
        source_file=source_file,
        line_number=line_number,
    )


def _non_empty_string(record: dict, name: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise InvalidLine("wrong_type", f"{name} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise InvalidLine("empty_id", f"{name} is empty")
    return value


def _utc_timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidLine("wrong_type", f"created_at must be an ISO-8601 string, got {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidLine("bad_timestamp", f"created_at {value[:40]!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= RAW_CONTENT_LIMIT else text[:RAW_CONTENT_LIMIT] + "…"
