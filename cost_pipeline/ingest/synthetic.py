"""Synthetic transcripts for demos, tests and benchmarks, shaped like real evaluation days.

Users speak the way speech-to-text writes them (fillers, stutters, repeated words, no
capitals or end punctuation), most of them ask for something a tool can do, about 30%
of user texts repeat verbatim across conversations (as a cache would see them), and
each day carries one malformed line of every kind the validator knows. A day depends
only on the seed and its date, so any range regenerates the same files.
"""

import json
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from cost_pipeline.ingest.landing import derive_turn_id

EVALUATIONS = (
    "eval-voice-assistant-v1",
    "eval-voice-assistant-v2",
    "eval-calendar-agent",
    "eval-shopping-agent",
    "eval-support-agent",
)
# Evaluations whose exporter writes explicit turn ids; the others rely on derived ids.
EXPLICIT_TURN_IDS = {"eval-voice-assistant-v2", "eval-support-agent"}
REPEAT_SHARE = 0.30
FILLERS = ("um", "uh", "like", "you know", "I mean", "er", "hmm")

PEOPLE = ("Sarah", "John", "Priya", "Miguel", "Anna", "the design team", "my manager", "Dr. Lee")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "tomorrow", "next week")
TIMES = ("9am", "10:30", "noon", "2pm", "3:15", "4pm", "5 in the afternoon")
TOPICS = (
    "flights to Lisbon",
    "the best pizza near me",
    "python dagster tutorials",
    "how tall is mount everest",
    "reviews of the new pixel phone",
    "train times to Boston",
    "symptoms of the flu",
)
TASKS = (
    "call the dentist",
    "pick up the laundry",
    "pay the electricity bill",
    "water the plants",
    "send the report",
    "book a table for dinner",
)
WHENS = ("in an hour", "tomorrow morning", "at 6pm", "on friday", "tonight")
ITEMS = (
    ("two", "large pizzas", "Dominos"),
    ("a", "phone charger", "Amazon"),
    ("three", "coffees", "Starbucks"),
    ("one", "pack of batteries", "Target"),
    ("a", "birthday cake", "the bakery"),
)
CITIES = ("Paris", "Seattle", "Tokyo", "Berlin", "Austin")
MESSAGES = ("I'll be late today", "the meeting moved to three", "thanks for the help", "can we talk tomorrow")

USER_TEMPLATES = {
    "schedule_meeting": (
        "can you schedule a meeting with {person} on {day} at {time}",
        "set up a call with {person} {day} at {time}",
    ),
    "send_email": ("send an email to {person} saying {message}", "email {person} that {message}"),
    "search_web": ("search the web for {topic}", "look up {topic} for me"),
    "set_reminder": ("remind me to {task} {when}", "set a reminder to {task} {when}"),
    "place_order": ("order {qty} {item} from {store}", "I want to order {qty} {item} from {store}"),
    "get_weather": ("what's the weather in {city} {when}", "is it going to rain in {city} {when}"),
    "small_talk": (
        "thanks that's great",
        "how are you doing today",
        "tell me a joke",
        "never mind",
        "that's all for now",
        "okay cool",
    ),
}
ASSISTANT_REPLIES = {
    "schedule_meeting": "Sure, I have scheduled the meeting with {person} for {day} at {time}.",
    "send_email": "Done, I sent the email to {person}.",
    "search_web": "Here is what I found about {topic}.",
    "set_reminder": "Okay, I will remind you to {task} {when}.",
    "place_order": "Your order of {qty} {item} from {store} is placed.",
    "get_weather": "It looks mild in {city} {when}, with a small chance of rain.",
    "small_talk": "Happy to help! Anything else?",
}
MALFORMED_KINDS = (
    "not_json",
    "missing_field",
    "wrong_type",
    "empty_text",
    "text_too_long",
    "invalid_utf8",
    "unknown_speaker",
    "bad_timestamp",
    "duplicate_turn_id",
)


@dataclass(frozen=True)
class DaySummary:
    day: date
    good_lines: int
    malformed_lines: int
    conversations: int
    files: int


def generate(landing_root: str | Path, start: date, days: int, turns_per_day: int, seed: int = 7) -> list[DaySummary]:
    """Write `days` days of transcripts under `landing_root`, replacing any files there."""
    return [
        write_day(Path(landing_root), start + timedelta(days=offset), turns_per_day, seed) for offset in range(days)
    ]


def write_day(landing_root: Path, day: date, turns_per_day: int, seed: int) -> DaySummary:
    rng = random.Random(f"{seed}:{day.isoformat()}")
    records, conversations = _day_records(rng, day, turns_per_day)
    lines_by_file: dict[str, list[bytes]] = {evaluation: [] for evaluation in EVALUATIONS}
    for record in records:
        lines_by_file[record["evaluation_id"]].append(json.dumps(record).encode())
    for kind in MALFORMED_KINDS:
        evaluation, line = _malformed_line(kind, rng, records, day)
        lines = lines_by_file[evaluation]
        # A duplicate must come after the line it copies, or the copy would be the keeper.
        position = len(lines) if kind == "duplicate_turn_id" else rng.randint(0, len(lines))
        lines.insert(position, line)
    folder = landing_root / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.jsonl"):
        stale.unlink()
    written = 0
    for evaluation, lines in lines_by_file.items():
        if lines:
            (folder / f"{evaluation}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
            written += 1
    return DaySummary(day, len(records), len(MALFORMED_KINDS), conversations, written)


def _day_records(rng: random.Random, day: date, turns: int) -> tuple[list[dict], int]:
    records: list[dict] = []
    said: list[str] = []
    conversation = 0
    while len(records) < turns:
        conversation += 1
        evaluation = rng.choice(EVALUATIONS)
        conversation_id = f"conv-{day:%Y%m%d}-{conversation:05d}"
        moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(
            seconds=rng.randint(2 * 3600, 21 * 3600)
        )
        length = min(rng.choice((2, 4, 4, 6, 6, 8, 10, 12)), turns - len(records))
        for index in range(length):
            speaker = "User" if index % 2 == 0 else "Assistant"
            if speaker == "User":
                intent, slots = _intent(rng)
                if said and rng.random() < REPEAT_SHARE:
                    text = rng.choice(said)
                else:
                    text = _disfluent(rng, rng.choice(USER_TEMPLATES[intent]).format(**slots))
                    said.append(text)
            else:
                text = ASSISTANT_REPLIES[intent].format(**slots)
            record = {
                "evaluation_id": evaluation,
                "conversation_id": conversation_id,
                "turn_index": index,
                "speaker": rng.choice((speaker, speaker.lower(), speaker.upper())) if rng.random() < 0.1 else speaker,
                "text": text,
                "created_at": _timestamp_text(rng, moment),
            }
            if evaluation in EXPLICIT_TURN_IDS:
                record = {"turn_id": f"{conversation_id}-t{index:03d}", **record}
            records.append(record)
            moment += timedelta(seconds=rng.randint(3, 45))
    return records, conversation


def _intent(rng: random.Random) -> tuple[str, dict]:
    intent = rng.choices(list(USER_TEMPLATES), weights=(3, 2, 2, 2, 2, 2, 3))[0]
    qty, item, store = rng.choice(ITEMS)
    slots = {
        "person": rng.choice(PEOPLE),
        "day": rng.choice(DAYS),
        "time": rng.choice(TIMES),
        "topic": rng.choice(TOPICS),
        "task": rng.choice(TASKS),
        "when": rng.choice(WHENS),
        "qty": qty,
        "item": item,
        "store": store,
        "city": rng.choice(CITIES),
        "message": rng.choice(MESSAGES),
    }
    return intent, slots


def _disfluent(rng: random.Random, sentence: str) -> str:
    """Speech-to-text style: fillers, stutters, repeated words, lower case, no end punctuation."""
    words = sentence.lower().rstrip(".?!").split()
    out: list[str] = []
    for position, word in enumerate(words):
        roll = rng.random()
        if roll < 0.12:
            out.append(rng.choice(FILLERS))
        elif roll < 0.18 and word[0].isalpha():
            out.append(f"{word[0]}-{word}" if len(word) > 2 else f"{word}-{word}")
            continue
        elif roll < 0.24:
            out.append(word)
        out.append(word)
        if position == 0 and rng.random() < 0.3:
            out.append(rng.choice(FILLERS))
    if rng.random() < 0.4:
        out.insert(0, rng.choice(("um", "uh", "so", "okay so")))
    return " ".join(out)


def _timestamp_text(rng: random.Random, moment: datetime) -> str:
    style = rng.random()
    if style < 0.7:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.85:
        return moment.replace(tzinfo=None).isoformat()
    return moment.astimezone(timezone(timedelta(hours=1))).isoformat()


def _malformed_line(kind: str, rng: random.Random, records: list[dict], day: date) -> tuple[str, bytes]:
    """One line breaking the rule `kind`, and the evaluation file it goes into."""
    if kind == "duplicate_turn_id":
        original = rng.choice(records)
        turn_id = original.get("turn_id") or derive_turn_id(
            original["evaluation_id"], original["conversation_id"], original["turn_index"]
        )
        copy = {**original, "turn_id": turn_id, "turn_index": original["turn_index"] + 1000}
        return original["evaluation_id"], json.dumps(copy).encode()
    evaluation = rng.choice(EVALUATIONS)
    base: dict[str, object] = {
        "evaluation_id": evaluation,
        "conversation_id": f"conv-{day:%Y%m%d}-bad-{kind}",
        "turn_index": 0,
        "speaker": "User",
        "text": "um book a table for two",
        "created_at": f"{day.isoformat()}T12:00:00Z",
    }
    if kind == "not_json":
        return evaluation, json.dumps(base).encode()[:-12]
    if kind == "missing_field":
        del base["text"]
    elif kind == "wrong_type":
        base["turn_index"] = "three"
    elif kind == "empty_text":
        base["text"] = "   "
    elif kind == "text_too_long":
        base["text"] = "la " * 10_000
    elif kind == "invalid_utf8":
        return evaluation, json.dumps(base).encode().replace(b"book", b"b\xff\xfeok")
    elif kind == "unknown_speaker":
        base["speaker"] = "Narrator"
    elif kind == "bad_timestamp":
        base["created_at"] = "yesterday around noon"
    return evaluation, json.dumps(base).encode()
