"""Request labels on Vertex AI: Cloud Billing carries them into the export, so each billed line names its origin.

Google's rules (cloud.google.com/vertex-ai/generative-ai/docs/multimodal/add-labels-to-api-calls):
at most 64 labels a request; keys 1 to 63 characters, values at most 63; only lowercase
letters, digits, underscores and dashes (international letters allowed); a key starts with a
letter. Every request carries `pipeline`, `stage`, `evaluation` and `partition` (low
cardinality: never a run id), plus the person's own from `costs.toml` `[labels]`.
"""

import functools
import re

MAX_LABELS = 64
MAX_LENGTH = 63
PIPELINE = "cost_pipeline"
OWN_KEYS = ("pipeline", "stage", "evaluation", "partition")

_NOT_ALLOWED = re.compile(r"[^\w-]|[A-Z]")


@functools.lru_cache(maxsize=4096)
def label_safe(text: str) -> str:
    """`text` as a label value: lowercased, each other character a dash, at most 63 characters."""
    return _NOT_ALLOWED.sub("-", text.lower())[:MAX_LENGTH]


def label_problem(key: str, value: str) -> str | None:
    """Why a configured label breaks Google's rules, or None: configured labels are checked, never rewritten."""
    if not (1 <= len(key) <= MAX_LENGTH) or len(value) > MAX_LENGTH:
        return f"label {key!r}: keys take 1 to {MAX_LENGTH} characters, values at most {MAX_LENGTH}"
    if label_safe(key) != key or label_safe(value) != value or not key[0].isalpha():
        return f"label {key!r}={value!r}: only lowercase letters, digits, '_' and '-', and a key starts with a letter"
    if key in OWN_KEYS:
        return f"label {key!r} is set by the pipeline itself ({', '.join(OWN_KEYS)})"
    return None


def request_labels(stage: str, evaluation_id: str, partition: str, extra: dict[str, str]) -> dict[str, str]:
    """The labels of one request: the pipeline's own four, then `extra` (checked with `label_problem`)."""
    labels = {
        "pipeline": PIPELINE,
        "stage": label_safe(stage),
        "evaluation": label_safe(evaluation_id),
        "partition": label_safe(partition),
    }
    return {**labels, **extra}


def check_labels(extra: dict[str, str]) -> list[str]:
    """Every problem of the configured labels, as sentences; empty when they can be sent."""
    problems = [problem for key, value in extra.items() if (problem := label_problem(key, value))]
    if len(extra) + len(OWN_KEYS) > MAX_LABELS:
        problems.append(f"{len(extra)} labels configured: at most {MAX_LABELS - len(OWN_KEYS)} besides the pipeline's")
    return problems
