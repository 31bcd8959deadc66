"""Token usage of one call: taken from the response when Gemini reports it, estimated only when it does not.

Columns keep the API's meaning: `input_tokens` is `promptTokenCount` (cached tokens
included), `cached_tokens` the cached part of it, `output_tokens` the candidates,
`thinking_tokens` and `tool_prompt_tokens` separate. An estimate is never a split of a
total: it counts the request and the response text, and is marked `estimated`.
"""

import math
from dataclasses import dataclass

REPORTED, ESTIMATED, CACHE = "reported", "estimated", "cache"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    tool_prompt_tokens: int = 0
    total_tokens: int = 0
    source: str = REPORTED

    def as_saved(self) -> dict[str, int]:
        """What a cache hit on this usage avoided paying for, by kind."""
        return {
            "saved_input_tokens": self.input_tokens,
            "saved_cached_tokens": self.cached_tokens,
            "saved_output_tokens": self.output_tokens,
            "saved_thinking_tokens": self.thinking_tokens,
        }


def usage_from_metadata(metadata) -> Usage | None:
    """The reported usage of an SDK `usage_metadata`, or None when the response carried none."""
    if metadata is None or metadata.prompt_token_count is None:
        return None
    counts = {
        "input_tokens": metadata.prompt_token_count or 0,
        "output_tokens": metadata.candidates_token_count or 0,
        "thinking_tokens": metadata.thoughts_token_count or 0,
        "cached_tokens": metadata.cached_content_token_count or 0,
        "tool_prompt_tokens": metadata.tool_use_prompt_token_count or 0,
    }
    total = metadata.total_token_count
    if total is None:
        total = counts["input_tokens"] + counts["output_tokens"] + counts["thinking_tokens"] + counts["tool_prompt_tokens"]
    return Usage(**counts, total_tokens=total, source=REPORTED)


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate: about four characters a token, at least one for any text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_usage(request_text: str, response_text: str) -> Usage:
    """Usage counted from the texts, for a response that reported none."""
    input_tokens, output_tokens = estimate_tokens(request_text), estimate_tokens(response_text)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                 total_tokens=input_tokens + output_tokens, source=ESTIMATED)
