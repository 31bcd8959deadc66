"""Token usage of one attempt: taken from the response when Gemini reports it, estimated only when it does not.

Columns keep the API's meaning: `input_tokens` is `promptTokenCount` (cached tokens
included), `cached_tokens` the cached part of it, `output_tokens` the candidates,
`thinking_tokens` and `tool_prompt_tokens` separate. Audio, image and video counts come
from the per-modality details (`promptTokensDetails`, `toolUsePromptTokensDetails`,
`cacheTokensDetails`, `candidatesTokensDetails`), mapped as genai-prices maps them
(DOCUMENT is image), because they are priced apart from text (image output at many times
text output); they are parts of the totals above, never added to them; text is the rest.
A response without `usageMetadata` is estimated (counted from the request and the answer,
marked `estimated`, never a split of a total); one whose `usageMetadata` carries no token
count at all (Vertex can send only `trafficType`) is billing `unknown`: nothing says what
was billed, so nothing is guessed into spend.
`usageMetadata.serviceTier` would be kept here, but google-genai's response model drops
it before we see it.
"""

import math
import re
from dataclasses import dataclass
from types import SimpleNamespace

REPORTED, ESTIMATED, CACHE, NONE, UNKNOWN = "reported", "estimated", "cache", "none", "unknown"
CHARS_PER_TOKEN = 4
MODALITIES = ("audio", "image", "video")
"""Modalities priced apart from text; text is what the totals leave."""
MODALITY_FIELDS = tuple(
    f"{kind}_{modality}_tokens" for modality in MODALITIES for kind in ("input", "cached", "output")
)
"""`input_<m>_tokens` (of prompt and tool-use prompt), `cached_<m>_tokens`, `output_<m>_tokens` (of candidates)."""
PRICED_FIELDS = (
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "thinking_tokens",
    "tool_prompt_tokens",
    *MODALITY_FIELDS,
)
"""The counts a price depends on."""
TOTAL_FIELDS = (
    "input_tokens",
    "output_tokens",
    "thinking_tokens",
    "cached_tokens",
    "tool_prompt_tokens",
    "total_tokens",
)
"""The counts of each kind, the modality parts left out: what the response cache keeps of an answer's usage."""
TOKEN_FIELDS = (*TOTAL_FIELDS, *MODALITY_FIELDS)
_COUNT_FIELDS = (
    "prompt_token_count",
    "candidates_token_count",
    "thoughts_token_count",
    "cached_content_token_count",
    "tool_use_prompt_token_count",
    "total_token_count",
)
SAVED_FIELDS = (
    "saved_input_tokens",
    "saved_cached_tokens",
    "saved_output_tokens",
    "saved_thinking_tokens",
    "saved_tool_prompt_tokens",
)


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
    input_image_tokens: int = 0
    cached_image_tokens: int = 0
    output_image_tokens: int = 0
    input_video_tokens: int = 0
    cached_video_tokens: int = 0
    output_video_tokens: int = 0
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

    def modalities(self) -> frozenset[str]:
        """The modalities other than text that this usage has tokens of (each is priced apart)."""
        return frozenset(
            m
            for m in MODALITIES
            if getattr(self, f"input_{m}_tokens")
            or getattr(self, f"cached_{m}_tokens")
            or getattr(self, f"output_{m}_tokens")
        )

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
    """The usage an SDK `usage_metadata` reports: None when the response had none, source `unknown` when it has no
    count at all."""
    if metadata is None:
        return None
    if all(getattr(metadata, name) is None for name in _COUNT_FIELDS):
        return Usage(source=UNKNOWN)
    counts = {
        "input_tokens": metadata.prompt_token_count or 0,
        "output_tokens": metadata.candidates_token_count or 0,
        "thinking_tokens": metadata.thoughts_token_count or 0,
        "cached_tokens": metadata.cached_content_token_count or 0,
        "tool_prompt_tokens": metadata.tool_use_prompt_token_count or 0,
    }
    prompt = _by_modality(metadata.prompt_tokens_details, metadata.tool_use_prompt_tokens_details)
    cached, output = _by_modality(metadata.cache_tokens_details), _by_modality(metadata.candidates_tokens_details)
    for modality in MODALITIES:
        counts.update(
            {
                f"input_{modality}_tokens": prompt[modality],
                f"cached_{modality}_tokens": cached[modality],
                f"output_{modality}_tokens": output[modality],
            }
        )
    total = metadata.total_token_count
    if total is None:
        total = sum(counts[name] for name in ("input_tokens", "output_tokens", "thinking_tokens", "tool_prompt_tokens"))
    return Usage(**counts, total_tokens=total, source=REPORTED)


def metadata_from_dict(usage: dict | None) -> SimpleNamespace | None:
    """A `usageMetadata` JSON object (as a body carries it) in the SDK's attribute names, for `usage_from_metadata`."""
    if usage is None:
        return None
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in usage.items()}
    details = {
        name: [
            SimpleNamespace(modality=item.get("modality"), token_count=item.get("tokenCount"))
            for item in snake.get(name) or []
        ]
        for name in (
            "prompt_tokens_details",
            "cache_tokens_details",
            "candidates_tokens_details",
            "tool_use_prompt_tokens_details",
        )
    }
    return SimpleNamespace(**{name: snake.get(name) for name in (*_COUNT_FIELDS, "traffic_type")}, **details)


_AS_MODALITY = {"AUDIO": "audio", "IMAGE": "image", "DOCUMENT": "image", "VIDEO": "video"}
"""genai-prices' mapping of Gemini's MediaModality to the units it prices (a document's pages are image tokens)."""


def _by_modality(*details_lists) -> dict[str, int]:
    found = dict.fromkeys(MODALITIES, 0)
    for details in details_lists:
        for detail in details or []:
            modality = _AS_MODALITY.get(str(getattr(detail.modality, "value", detail.modality)))
            if modality:
                found[modality] += detail.token_count or 0
    return found


def normalized_model(name: str | None) -> str | None:
    """A response's `modelVersion` as a price list names models: `models/gemini-2.5-pro` -> `gemini-2.5-pro`.

    The Gemini API sends the resource path at times, and Vertex AI the publisher's; prices and
    invoices name the bare, lower-case model.
    """
    if not name:
        return name
    return name.strip().lower().rpartition("models/")[2]


def answer_usage(metadata, request_text: str, answer_text: str) -> tuple[Usage, str | None]:
    """What a 200 was billed, and why its billing is unknown when it is (None when known).

    Reported when `usageMetadata` has counts; estimated when the response had no
    `usageMetadata`; unknown when it had one without any count.
    """
    usage = usage_from_metadata(metadata)
    if usage is None:
        return estimate_usage(request_text, answer_text), None
    if usage.source == UNKNOWN:
        traffic = getattr(metadata, "traffic_type", None)
        traffic = getattr(traffic, "value", traffic)
        return usage, (
            f"usageMetadata without token counts{f' (trafficType {traffic})' if traffic else ''}: billing unknown"
        )
    return usage, None


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate: about four characters a token, at least one for any text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_usage(request_text: str, response_text: str) -> Usage:
    """Usage counted from the texts, for a response that reported none."""
    input_tokens, output_tokens = estimate_tokens(request_text), estimate_tokens(response_text)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        source=ESTIMATED,
    )
