"""What we ask Gemini: the cleaning prompt with its conversation context, and the function decision.

A request is a plain `LlmRequest` so that its hash (the response-cache key) covers
exactly what Gemini sees: model, system instruction, tools, contents and generation
config. Parsing the answers lives here too, beside the prompts that ask for them.
"""

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache

from cost_pipeline.gemini.stages import CLEAN, FUNCTION
from cost_pipeline.gemini.tools import FUNCTION_DECLARATIONS

CLEANING_INSTRUCTION = (
    "You clean speech-to-text transcripts of conversations between a user and a voice assistant. "
    "Rewrite only the last turn you are given: remove fillers (um, uh, er, filler 'like', 'you know'), "
    "stutters and immediately repeated words, fix capitalisation and end punctuation, and change nothing "
    "else: keep the speaker's words, meaning and language. Earlier cleaned turns are context only. "
    "Answer with JSON: cleaned_text, your confidence from 0 to 1, and the list of changes you made."
)
CLEANING_SCHEMA = {
    "type": "object",
    "properties": {
        "cleaned_text": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "changes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["cleaned_text", "confidence", "changes"],
}
# Digested once: hashing a request must not serialise the declarations on every call.
TOOLS_DIGEST = hashlib.sha256(
    json.dumps([d.model_dump(mode="json", exclude_none=True) for d in FUNCTION_DECLARATIONS], sort_keys=True).encode()
).hexdigest()

# `json.dumps(..., sort_keys=True)` builds this encoder on every call; the key hashes one request per API call.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True)
_CONTENTS_FIRST = '{"contents": '
"""How a request's canonical JSON starts: "contents" sorts before every other key."""
_SETTINGS_JSON: dict[tuple, tuple[dict, str]] = {}
"""The canonical JSON after the contents (endpoint, generation config, model, system instruction, tools), by the
settings that make it, beside the generation config it was made from (kept alive by it). A day's requests share a
handful of these, and encoding them (the cleaning schema sorted at every level) is most of a request's hash."""
_SETTINGS_JSON_MAX = 256

FUNCTION_INSTRUCTION = (
    "You are a voice assistant's planner. If the user's request calls for one of your tools, call exactly "
    "one tool with arguments taken from the request. If no tool fits, answer briefly without calling a tool."
)

REMINDER_PREFIX = "Your previous answer was rejected"
REMINDERS = {
    CLEAN: "answer with one short JSON object with cleaned_text, confidence and changes, nothing else.",
    FUNCTION: "call at most one of the declared tools, with arguments that match its parameters, "
    "or answer in one short sentence.",
}


@dataclass(frozen=True)
class LlmRequest:
    stage: str
    model: str
    system_instruction: str
    contents: tuple[tuple[str, ...], ...]
    """One tuple of text parts per user content, in order."""
    generation_config: dict = field(default_factory=dict)
    with_tools: bool = False

    def request_hash(self, endpoint: str) -> str:
        """The cache key: a hash of everything that determines the answer, the endpoint that gives it included.

        The endpoint is part of the key so that answers from the local server (or any other
        endpoint) are never served as free cache hits once calls go to Google's API.
        """
        return hashlib.sha256(
            (_CONTENTS_FIRST + _CANONICAL_JSON.encode(self.contents) + self._settings_json(endpoint)).encode()
        ).hexdigest()

    def _settings(self, endpoint: str) -> dict:
        return {
            "endpoint": endpoint,
            "model": self.model,
            "system_instruction": self.system_instruction,
            "tools": TOOLS_DIGEST if self.with_tools else None,
            "generation_config": self.generation_config,
        }

    def _settings_json(self, endpoint: str) -> str:
        """The canonical JSON after the contents, from memory when a request with these settings was hashed before.

        Remembered by the generation config's identity (requests of one kind share one dict, see `_shared_config`).
        The entry holds its config, so no other object can take that id while it is remembered: a config built
        afresh is encoded afresh, never mistaken for another.
        """
        config = self.generation_config
        key = (endpoint, self.model, self.system_instruction, self.with_tools, id(config))
        known = _SETTINGS_JSON.get(key)
        if known is None:
            if len(_SETTINGS_JSON) >= _SETTINGS_JSON_MAX:
                _SETTINGS_JSON.clear()
            # '{"endpoint": ...}' without its brace, after the contents' comma.
            known = _SETTINGS_JSON[key] = (config, ", " + _CANONICAL_JSON.encode(self._settings(endpoint))[1:])
        return known[1]

    def with_reminder(self, rejection: str, attempt: int) -> "LlmRequest":
        """The request to send after a rejected answer: a reminder of what went wrong, and another seed.

        At temperature 0 an identical request usually gets the identical answer back, so a
        retry that changes nothing pays again for the same rejection. The reminder names the
        rejection and restates the instruction; the seed moves sampling off the path that
        produced it. The cache key stays the original request's.
        """
        reminder = f"{REMINDER_PREFIX} ({rejection}). Follow the instructions exactly: " + (
            REMINDERS[self.stage] if self.stage in REMINDERS else "answer again."
        )
        return LlmRequest(
            self.stage,
            self.model,
            self.system_instruction,
            (*self.contents, (reminder,)),
            {**self.generation_config, "seed": attempt},
            self.with_tools,
        )

    def text(self) -> str:
        """Everything the prompt says, for estimating tokens when usage is missing."""
        return "\n".join([self.system_instruction, *(part for content in self.contents for part in content)])


def cleaning_request(
    model: str, speaker: str, text: str, context: list[tuple[str, str]], thinking_budget: int | None
) -> LlmRequest:
    """Clean `text`, with the conversation's earlier cleaned turns (speaker, text) as context."""
    contents: list[tuple[str, ...]] = []
    if context:
        contents.append(("Earlier cleaned turns of this conversation:\n" + "\n".join(f"{s}: {t}" for s, t in context),))
    contents.append((f"Turn to clean, spoken by {speaker}:", text))
    return LlmRequest(CLEAN, model, CLEANING_INSTRUCTION, tuple(contents), _shared_config(CLEAN, thinking_budget))


def function_request(model: str, cleaned_text: str, thinking_budget: int | None) -> LlmRequest:
    """Decide on a tool for one cleaned user turn; the turn alone, so repeats share a cache entry."""
    return LlmRequest(
        FUNCTION,
        model,
        FUNCTION_INSTRUCTION,
        ((cleaned_text,),),
        _shared_config(FUNCTION, thinking_budget),
        with_tools=True,
    )


@cache
def _shared_config(stage: str, thinking_budget: int | None) -> dict:
    """One generation config per stage and thinking budget, shared by its requests (read, never changed: a reminder
    copies it), so their hashes find its JSON in memory."""
    extra = (
        {"response_mime_type": "application/json", "response_json_schema": CLEANING_SCHEMA} if stage == CLEAN else {}
    )
    config = {"temperature": 0.0, **extra}
    if thinking_budget is not None:
        config["thinking_budget"] = thinking_budget
    return config


def parse_cleaning(text: str | None) -> dict:
    """The cleaning answer as {cleaned_text, confidence, changes}; ValueError if it is not that."""
    try:
        answer = json.loads(text or "")
    except json.JSONDecodeError as err:
        raise ValueError(f"cleaning answer is not JSON: {err.msg}") from None
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("cleaned_text"), str)
        or not answer["cleaned_text"].strip()
    ):
        raise ValueError("cleaning answer has no cleaned_text")
    confidence = answer.get("confidence")
    changes = answer.get("changes") or []
    return {
        "cleaned_text": answer["cleaned_text"],
        "confidence": float(confidence) if isinstance(confidence, (int, float)) else None,
        "changes": [str(change) for change in changes] if isinstance(changes, list) else [str(changes)],
    }


def parse_function(function_calls, text: str | None) -> dict:
    """The decision as {function_name, arguments, answer}; no call means function_name None."""
    if function_calls:
        call = function_calls[0]
        return {"function_name": call.name, "arguments": dict(call.args or {}), "answer": None}
    return {"function_name": None, "arguments": None, "answer": text}
