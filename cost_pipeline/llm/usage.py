"""Token usage of one attempt: taken from the response when Gemini reports it, estimated only when it does not.

Columns keep the API's meaning: `input_tokens` is `promptTokenCount` (cached tokens
included), `cached_tokens` the cached part of it, `output_tokens` the candidates,
`thinking_tokens` and `tool_prompt_tokens` separate. Audio counts come from the
per-modality details (`promptTokensDetails`, `cacheTokensDetails`,
`candidatesTokensDetails`) because genai-prices prices audio apart from text; they are
parts of the totals above, never added to them. An estimate is never a split of a
total: it counts the request and the response text, and is marked `estimated`.
`usageMetadata.serviceTier` would be kept here, but google-genai's response model drops
it before we see it.
"""

import math
from dataclasses import dataclass

REPORTED, ESTIMATED, CACHE, NONE, UNKNOWN = "reported", "estimated", "cache", "none", "unknown"
CHARS_PER_TOKEN = 4
TOKEN_FIELDS = ("input_tokens", "output_tokens", "thinking_tokens", "cached_tokens", "tool_prompt_tokens", "total_tokens",
                "input_audio_tokens", "cached_audio_tokens", "output_audio_tokens")
SAVED_FIELDS = ("saved_input_tokens", "saved_cached_tokens", "saved_output_tokens", "saved_thinking_tokens",
                "saved_tool_prompt_tokens")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    tool_prompt_tokens: int = 0
    total_tokens: int = 0
    input_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    output_audio_tokens: int = 0
    source: str = REPORTED

    def as_saved(self) -> dict[str, int]:
        """What a cache hit on this usage avoided paying for, by kind."""
        return {
            "saved_input_tokens": self.input_tokens,
            "saved_cached_tokens": self.cached_tokens,
            "saved_output_tokens": self.output_tokens,
            "saved_thinking_tokens": self.thinking_tokens,
            "saved_tool_prompt_tokens": self.tool_prompt_tokens,
        }

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TOKEN_FIELDS}

    def __add__(self, other: "Usage") -> "Usage":
        """Two attempts' usage together; the source is the weaker of the two (unknown < estimated < reported)."""
        order = [UNKNOWN, ESTIMATED, REPORTED, NONE]
        source = min(self.source, other.source, key=lambda s: order.index(s) if s in order else 0)
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in TOKEN_FIELDS}, source=source)


NO_USAGE = Usage(source=NONE)
"""What an attempt that was not billed (or a call that made none) used."""


def usage_from_metadata(metadata) -> Usage | None:
    """The reported usage of an SDK `usage_metadata`, or None when the response carried no counts."""
    if metadata is None or metadata.prompt_token_count is None:
        return None
    counts = {
        "input_tokens": metadata.prompt_token_count or 0,
        "output_tokens": metadata.candidates_token_count or 0,
        "thinking_tokens": metadata.thoughts_token_count or 0,
        "cached_tokens": metadata.cached_content_token_count or 0,
        "tool_prompt_tokens": metadata.tool_use_prompt_token_count or 0,
        "input_audio_tokens": _audio(metadata.prompt_tokens_details),
        "cached_audio_tokens": _audio(metadata.cache_tokens_details),
        "output_audio_tokens": _audio(metadata.candidates_tokens_details),
    }
    total = metadata.total_token_count
    if total is None:
        total = counts["input_tokens"] + counts["output_tokens"] + counts["thinking_tokens"] + counts["tool_prompt_tokens"]
    return Usage(**counts, total_tokens=total, source=REPORTED)


def _audio(details) -> int:
    return sum(d.token_count or 0 for d in details or [] if d.modality is not None and str(d.modality.value) == "AUDIO")


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate: about four characters a token, at least one for any text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_usage(request_text: str, response_text: str) -> Usage:
    """Usage counted from the texts, for a response that reported none."""
    input_tokens, output_tokens = estimate_tokens(request_text), estimate_tokens(response_text)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                 total_tokens=input_tokens + output_tokens, source=ESTIMATED)

