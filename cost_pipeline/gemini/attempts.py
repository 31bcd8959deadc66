"""One HTTP attempt that left the process: what it was for, what came back, and whether it was billed.

The session fills an `Attempt` twice: when the request is about to be sent (identity and
`sent_at`), and when the attempt ends (status, outcome, usage). A sink records both, so
an attempt whose process was killed in flight is still known to have been sent. Pure
data: the ledger (`cost_pipeline.money.ledger`) decides where it goes.

Billing follows Gemini's: a 200 that carries usage is billed whatever we made of it
(`accepted` or `rejected`); a 429, 5xx, 4xx, timeout or transport failure is not; a
200 whose body was cut off mid-JSON was billed by the provider for usage we never saw,
so `billed` is None (unknown) and the reason says so.
"""

from dataclasses import dataclass, field
from typing import Protocol

from cost_pipeline.gemini.usage import NO_USAGE, Usage

ACCEPTED, REJECTED, ERROR = "accepted", "rejected", "error"


@dataclass
class Attempt:
    attempt_id: str
    call_id: str
    run_id: str
    partition_date: str
    evaluation_id: str
    turn_id: str
    stage: str
    model: str
    endpoint: str
    request_hash: str
    attempt: int
    sent_at: float
    """Unix time, UTC."""
    model_version: str | None = None
    response_id: str | None = None
    latency_ms: float | None = None
    http_status: int | None = None
    outcome: str | None = None
    reason: str | None = None
    billed: bool | None = False
    usage: Usage = field(default=NO_USAGE)
    processing: str = "standard"
    """standard, or batch for a request sent inside a Batch API job (billed at the batch price)."""
    labels: dict[str, str] | None = None
    """The request's labels on Vertex AI (Cloud Billing carries them into the export); None elsewhere."""
    served_tier: str | None = None
    """The traffic type Vertex AI served the answer at (`usageMetadata.trafficType`), as sent; None when not said."""

    def sent_line(self) -> dict:
        """What is known before the request leaves: enough to record it if no answer ever comes."""
        line = {"event": "sent", **{k: getattr(self, k) for k in _IDENTITY_FIELDS}}
        if self.processing != "standard":  # absent means standard: the common line stays as short as it was
            line["processing"] = self.processing
        if self.labels:
            line["labels"] = self.labels
        return line

    def done_line(self) -> dict:
        usage = self.usage
        return {
            "event": "done",
            "attempt_id": self.attempt_id,
            **{k: getattr(self, k) for k in _OUTCOME_FIELDS if k != "usage"},
            "usage_source": usage.source,
            **(usage.counts() if self.billed is not False else {}),
            **({"served_tier": self.served_tier} if self.served_tier else {}),
        }


_IDENTITY_FIELDS = (
    "attempt_id",
    "call_id",
    "run_id",
    "partition_date",
    "evaluation_id",
    "turn_id",
    "stage",
    "model",
    "endpoint",
    "request_hash",
    "attempt",
    "sent_at",
)
_OUTCOME_FIELDS = ("model_version", "response_id", "latency_ms", "http_status", "outcome", "reason", "billed", "usage")


class AttemptSink(Protocol):
    """Where attempts are recorded; `sent` before the request leaves, `done` when it ends."""

    def sent(self, attempt: Attempt) -> None: ...

    def done(self, attempt: Attempt) -> None: ...


class NoSink:
    """Records nothing: for code paths that make no billable call."""

    def sent(self, attempt: Attempt) -> None:
        pass

    def done(self, attempt: Attempt) -> None:
        pass
