"""Google Cloud Billing SKU descriptions: which lines are Gemini tokens we can compare, which are other spend.

A billing export holds every service and project of the billing account. Each line's SKU
is put in one class, by the rule below or by an override in `costs.toml`, and none is
ever guessed onto a model or token kind it does not name:

- `tokens`: a Gemini token line, with model (the invoice's name: `gemini-2.5-flash-lite`,
  `gemini-2.5-flash-image`), kind (`input`, `cached_input`, `output`), modality (`text`,
  `audio`, `image`, `video`), tier (`standard`, `batch`, `flex`, `priority`) and context
  (`short`, `long`: the long-context price above 200k prompt tokens). Both services'
  wording is read: the Gemini API's ("Generate content input token count gemini 2.5 flash
  lite short input text") and Vertex AI's ("Gemini 2.5 Flash Lite Text Input - Predictions").
- `other_gemini`: Gemini spend that is not tokens of a generate-content call: context-cache
  storage (token hours), grounding and search, embeddings, Imagen and Veo generation, the
  Live API. Reported with its cost, never compared with token counts.
- `not_gemini`: every other service (Cloud Storage, BigQuery, Vertex AI's non-Gemini SKUs).
- `unknown_gemini`: a Gemini service's SKU this rule cannot read: reported by name and
  cost with a warning, so a new SKU wording is seen, never silently mapped.

Overrides (`[billing.skus]` in costs.toml) name an exact description:
`"<model>/<kind>[/<modality>][/<tier>]"` for a token line, or one of `other_gemini`,
`not_gemini` to say it is not one. Pure: no Dagster.
"""

import re
from dataclasses import dataclass

TOKENS, OTHER_GEMINI, NOT_GEMINI, UNKNOWN_GEMINI = "tokens", "other_gemini", "not_gemini", "unknown_gemini"
KINDS = ("input", "cached_input", "output")
"""Token kinds as the invoice splits them: uncached prompt (tool-use prompt included), cached prompt, output
(thinking included)."""
MODALITIES = ("text", "audio", "image", "video")
TIERS = ("standard", "batch", "flex", "priority")
SHORT, LONG = "short", "long"
LONG_CONTEXT_TOKENS = 200_000
"""Google's long-context threshold: a prompt above it is billed on the long-context SKUs."""
GEMINI_API, VERTEX_AI = "Gemini API", "Vertex AI"
GEMINI_SERVICES = (GEMINI_API, "Generative Language API", VERTEX_AI)
"""Services whose lines can be Gemini spend (the Gemini API was named Generative Language API before)."""
GEMINI_API_SERVICE_ID = "AEFD-7695-64FA"

_MODEL = re.compile(r"\bgemini[\s-]*(?P<version>\d+(?:\.\d+)?)\s+(?P<size>pro|flash|ultra|nano)(?P<lite>\s+lite)?\b")
_MODEL_ID = re.compile(
    r"^gemini-(?P<version>\d+(?:\.\d+)?)-(?P<size>pro|flash|ultra|nano)(?P<lite>-lite)?"
    r"(?P<variant>-(?:image|tts|live|native-audio))?"
)
_FILLERS = {"ga", "preview", "global", "regional"}
_MODALITY_WORDS = {"text", "image", "audio", "video"}
_OTHER_SPEND = (  # (pattern, what): checked in order, before any token rule
    (r"\bstorage\b|\btoken hours?\b", "context cache storage"),
    (r"\bgrounding\b|\bsearch\b", "grounding and search"),
    (r"\bembed", "embeddings"),
    (r"\bimagen\b", "image generation"),
    (r"\bveo\b|\bvideos? generat", "video generation"),
    (r"\blyria\b", "music generation"),
    (r"\bbidi|\blive\b|\bnative audio\b", "Live API"),
    (r"\bprovisioned throughput\b", "provisioned throughput"),
)
_GEMINI_ON_VERTEX = re.compile(
    r"\bgemini|\bimagen\b|\bveo\b|\bvideos? generat|\blyria\b|\bgrounding\b"
    r"|\bprovisioned throughput\b"
)


@dataclass(frozen=True)
class Sku:
    category: str
    model: str | None = None
    kind: str | None = None
    modality: str | None = None
    tier: str | None = None
    context: str | None = None
    spend: str | None = None
    """For `other_gemini`: what it is (context cache storage, embeddings, ...)."""


def classify(service: str, description: str, overrides: dict[str, str] | None = None) -> Sku:
    """The class of one export line's SKU (see the module docstring); never raises for a line of an export."""
    if overrides and description in overrides:
        return parse_override(description, overrides[description])
    text = re.sub(r"[\s_]+", " ", description.lower()).strip()
    if service not in GEMINI_SERVICES or (service == VERTEX_AI and not _GEMINI_ON_VERTEX.search(text)):
        return Sku(NOT_GEMINI)
    model, rest = _model(text)
    for pattern, what in _OTHER_SPEND:
        if re.search(pattern, text):
            return Sku(OTHER_GEMINI, model=model, spend=what)
    if model is None or not re.search(r"\binput\b|\boutput\b|\bcach", rest):
        return Sku(UNKNOWN_GEMINI)
    kind = "cached_input" if re.search(r"\bcach", rest) else "output" if re.search(r"\boutput\b", rest) else "input"
    modality = next((m for m in ("audio", "image", "video") if re.search(rf"\b{m}\b", rest)), "text")
    tier = next((t for t in ("batch", "flex", "priority") if re.search(rf"\b{t}\b", rest)), "standard")
    return Sku(TOKENS, model, kind, modality, tier, LONG if re.search(r"\blong\b", rest) else SHORT)


def _model(text: str) -> tuple[str | None, str]:
    """The invoice's model name in a SKU's text, and the text without it.

    The words after the family name say whether it is a variant billed as its own model:
    "Native Image Generation", "Gemini 3 Pro Image" at the end of the text, or "Image"
    followed by the line's own modality ("Gemini 3.1 Flash Image Text Input") name an
    image model; "Native Audio" and "TTS" name theirs. Otherwise "image" is the modality
    ("gemini 3.7 flash image flex caching").
    """
    found = _MODEL.search(text)
    if not found:
        return None, text
    version = found["version"]
    if version.endswith(".0") and int(version.split(".")[0]) >= 3:  # "Gemini 3.0 Pro" is gemini-3-pro; 2.0 keeps it
        version = version[:-2]
    name = f"gemini-{version}-{found['size']}" + ("-lite" if found["lite"] else "")
    words = text[found.end() :].split()
    at = 0
    while at < len(words) and words[at] in _FILLERS:
        at += 1
    variant, used = None, 0
    following = [w for w in words[at + 1 :] if w not in _FILLERS]
    if words[at : at + 3] == ["native", "image", "generation"]:
        variant, used = "image", 3
    elif words[at : at + 2] == ["native", "audio"]:
        variant, used = "native-audio", 2
    elif words[at : at + 1] == ["tts"]:
        variant, used = "tts", 1
    elif words[at : at + 1] == ["image"] and (not following or following[0] in _MODALITY_WORDS):
        variant, used = "image", 1
    rest = text[: found.start()] + " " + " ".join(words[at + used :] if variant else words)
    return name + (f"-{variant}" if variant else ""), rest


def invoice_model(model: str) -> str:
    """The name an invoice gives a served model: `gemini-2.5-flash-lite-preview-09-2025` -> `gemini-2.5-flash-lite`.

    Dated and preview builds are billed on their family's SKUs; a model outside the rule keeps its name.
    """
    found = _MODEL_ID.match(model.lower().rpartition("models/")[2])
    if not found:
        return model
    return f"gemini-{found['version']}-{found['size']}" + (found["lite"] or "") + (found["variant"] or "")


def parse_override(description: str, target: str) -> Sku:
    """An override's target: `<model>/<kind>[/<modality>][/<tier>]`, `other_gemini` or `not_gemini`."""
    if target in (OTHER_GEMINI, NOT_GEMINI):
        return Sku(target, spend="as costs.toml says" if target == OTHER_GEMINI else None)
    parts = target.split("/")
    kind_at = next((i for i, part in enumerate(parts) if part in KINDS and i > 0), None)
    if kind_at is None:
        raise ValueError(
            f"override for SKU {description!r} must be '<model>/<kind>[/<modality>][/<tier>]' with kind "
            f"in {KINDS}, or one of {OTHER_GEMINI!r}, {NOT_GEMINI!r}; got {target!r}"
        )
    model, kind, rest = "/".join(parts[:kind_at]), parts[kind_at], parts[kind_at + 1 :]
    modality = next((part for part in rest if part in MODALITIES), "text")
    tier = next((part for part in rest if part in TIERS), "standard")
    unknown = [part for part in rest if part not in MODALITIES and part not in TIERS]
    if unknown:
        raise ValueError(
            f"override for SKU {description!r}: {unknown} are neither a modality {MODALITIES} nor a tier {TIERS}"
        )
    return Sku(TOKENS, model, kind, modality, tier, SHORT)


CATALOGUE = {
    ("gemini-2.5-flash-lite", "input"): (
        "399C-32AD-1412",
        "Generate content input token count gemini 2.5 flash lite short input text",
    ),
    ("gemini-2.5-flash-lite", "output"): (
        "7133-23F2-04B7",
        "Generate content output token count gemini 2.5 flash lite short output text non-thinking",
    ),
    ("gemini-2.5-flash-lite", "cached_input"): (
        "EBC7-B1E9-1DA3",
        "Generate_content text cached input token count for gemini 2.5 Flash Lite",
    ),
    ("gemini-2.5-flash", "input"): (
        "981A-C057-0BF9",
        "Generate content input token count gemini 2.5 flash short input text",
    ),
    ("gemini-2.5-flash", "output"): (
        "911A-8880-A243",
        "Generate content output token count gemini 2.5 flash short input text",
    ),
    ("gemini-2.5-flash", "cached_input"): (
        "5CDC-4C82-2AEC",
        "Generate content cached input token count gemini 2.5 flash input short text",
    ),
    ("gemini-2.5-pro", "input"): (
        "2D1C-F790-3C09",
        "Generate content input token count Gemini 2.5 Pro short input text",
    ),
    ("gemini-2.5-pro", "output"): (
        "0F51-429B-C2DC",
        "Generate content output token count Gemini 2.5 Pro short output text",
    ),
    ("gemini-2.5-pro", "cached_input"): (
        "9465-C223-0CE9",
        "Generate content cached input token count gemini 2.5 pro short input",
    ),
    ("gemini-3.5-flash", "input"): ("63AC-2BA8-3F85", "Generate content input token count gemini 3.5 flash text"),
    ("gemini-3.5-flash", "output"): ("F9BE-D8E8-69E9", "Generate content output token count gemini 3.5 flash text"),
}
"""Gemini API SKUs (id, description) of standard short-context text, verbatim from the Cloud Billing catalogue
(sources: cost_pipeline_tests/fixtures/billing/README.md)."""


def describe(
    model: str, kind: str, modality: str = "text", tier: str = "standard", context: str = SHORT
) -> tuple[str | None, str]:
    """(SKU id, description) of a Gemini API token SKU as Cloud Billing exports print it; `classify` reads it back.

    The catalogue's own SKU where it is listed above (id included); otherwise the wording
    Google uses for its newest models ("Generate content input token count gemini 3.5
    flash text", tier words at the end), with no id, as this module cannot know one.
    """
    if modality == "text" and tier == "standard" and context == SHORT and (model, kind) in CATALOGUE:
        return CATALOGUE[(model, kind)]
    what = "cached input" if kind == "cached_input" else kind
    text = f"Generate content {what} token count {model.replace('-', ' ')} {modality}"
    if context == LONG:
        text += " long"
    return None, text if tier == "standard" else f"{text} {tier}"
