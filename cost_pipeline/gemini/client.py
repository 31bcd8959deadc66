"""The Gemini session: google-genai's async client under limits, retries and a response cache.

`GeminiSession` is what one run uses inside its event loop, configured by a
`GeminiSettings` (`gemini/settings.py`). Every call returns a `CallOutcome` (result, usage,
attempts, latency, status), never an exception, so a failed call becomes a `failed`
row instead of a lost turn.

Retries happen at this level, with tenacity's jittered exponential backoff (the SDK's
own dependency) in a plain loop, rather than in the SDK's `HttpRetryOptions`, for two
reasons the SDK cannot serve: every attempt must pass the rate limiters again
(SDK-internal retries would bypass them and overshoot the quota), and a 429's
`RetryInfo.retryDelay` must be honoured (the SDK waits only its own exponential backoff).
Rate limits use aiolimiter: requests evenly spaced, prompt tokens in one-second buckets, so
a minute's quota is never spent in a burst.

The key never reaches logs, metadata,
tables or error text: errors pass through `redact` before they are kept.
"""

import asyncio
import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pydantic
import tenacity
from aiolimiter import AsyncLimiter
from google.genai import errors, types

from cost_pipeline.config import API_KEY_ENVS
from cost_pipeline.gemini.answers import Verdict, judge
from cost_pipeline.gemini.attempts import ACCEPTED, ERROR, REJECTED, Attempt, AttemptSink, NoSink
from cost_pipeline.gemini.cache import CachedResponse, ResponseCache
from cost_pipeline.gemini.labels import request_labels
from cost_pipeline.gemini.prompts import LlmRequest
from cost_pipeline.gemini.sdk_request import content_config, request_contents
from cost_pipeline.gemini.settings import GeminiSettings
from cost_pipeline.gemini.spend_limit import WAIT, SpendGuard
from cost_pipeline.gemini.traffic import ON_DEMAND, SERVED_AS, STANDARD_TRAFFIC_TYPES
from cost_pipeline.gemini.usage import (
    CACHE,
    ESTIMATED,
    NO_USAGE,
    UNKNOWN,
    Usage,
    answer_usage,
    estimate_tokens,
    normalized_model,
)

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
ERROR_TEXT_LIMIT = 500
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
"""A call is skipped, never sent, when the run's budget could not hold it (`money/budgets.py`)."""


@dataclass
class CallOutcome:
    """One logical call: its answer or final error, what its attempts were billed, and how it went."""

    request_hash: str
    stage: str
    model: str
    status: str
    result: dict | None
    usage: Usage
    """The billed usage of every attempt of this call in this run (rejected answers included)."""
    saved: Usage | None = None
    cache_hit: bool = False
    attempts: int = 0
    billed_attempts: int = 0
    rejected_attempts: int = 0
    billing_unknown_attempts: int = 0
    model_version: str | None = None
    served_tier: str | None = None
    """The tier its billed attempts were served at (`call_served_tier`); None for the standard tier or no answer."""
    latency_ms: float | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    processing: str = "standard"
    """The price list its attempts are billed on: standard, or batch for a Batch API job's answer."""

    @property
    def cleaned_text(self) -> str | None:
        """A successful cleaning's text; None for a call that failed or was skipped."""
        return self.result["cleaned_text"] if self.status == OK and self.result is not None else None


@dataclass(frozen=True)
class CallTag:
    """Which turn a call is for, as the ledger records it."""

    call_id: str
    evaluation_id: str
    turn_id: str


class BudgetExhausted(Exception):
    """The next attempt could break a spend limit: it is not sent."""


class RejectedAnswer(Exception):
    """A billed 200 whose answer we cannot use; retried with a reminder unless final or over the cap."""

    def __init__(self, reason: str, final: bool):
        super().__init__(reason)
        self.final = final


class GeminiSession:
    """One run's calls: one genai client, limiters, cache, ledger and counters; create it inside its event loop."""

    def __init__(
        self,
        settings: GeminiSettings,
        cache: ResponseCache,
        ledger: AttemptSink | None = None,
        run_id: str = "",
        partition_date: str = "",
    ):
        self.settings = settings
        self.cache = cache
        self.ledger = NoSink() if ledger is None else ledger
        self.run_id, self.partition_date = run_id, partition_date
        self.endpoint_id = settings.endpoint_id()
        self.vertex = settings.endpoint.on_vertex() and not settings.endpoint.needs_local_server()
        self.labels: dict[str, str] = {}
        """Labels every Vertex request carries besides the pipeline's own (`costs.toml` `[labels]`)."""
        # Every key this process knows, first the resource's: the one used, and the ones to redact.
        self._secrets = known_secrets(settings.endpoint.api_key)
        self.client = settings.genai_client()
        self.semaphore = asyncio.Semaphore(settings.limits.max_concurrency)
        # Requests are spaced evenly (a bucket of one), so no 60-second window exceeds the limit;
        # tokens drain per second, as a request's weight can be far above one token.
        self.request_limiter = AsyncLimiter(1, 60 / settings.request_limit())
        self.token_limiter = _per_second_limiter(settings.token_limit())
        self.backoff = tenacity.wait_exponential_jitter(
            initial=settings.retries.initial_backoff_s, max=settings.retries.max_backoff_s
        )
        self.inflight: dict[str, asyncio.Future] = {}
        self.stats: Counter = Counter()
        # Spend limits (None: no limits, no cost): the budget, an attempt's high forecast, an ended attempt's cost.
        self.spend: SpendGuard | None = None
        self._budget_settled = asyncio.Event()
        self._configs: dict[tuple, types.GenerateContentConfig] = {}

    async def call(
        self, request: LlmRequest, text_hash: str, tag: CallTag, context_hash: str | None = None
    ) -> CallOutcome:
        """Answer `request` from the cache, from an identical call in flight, or from Gemini.

        A paid answer is cached under `text_hash` and, for a cleaning, `context_hash` (`gemini/cache.py`).
        """
        request_hash = request.request_hash(self.endpoint_id)
        self.stats["calls"] += 1
        cached = self.cache.get(request_hash)
        if cached is None and self.cache.enabled and request_hash in self.inflight:
            first = await asyncio.shield(self.inflight[request_hash])
            if first.status == OK:
                cached = self.cache.get(request_hash) or CachedResponse(first.result, first.saved or first.usage)
        if cached is not None:
            self.stats["cache_hits"] += 1
            return CallOutcome(
                request_hash,
                request.stage,
                request.model,
                OK,
                cached.result,
                Usage(source=CACHE),
                saved=cached.usage,
                cache_hit=True,
                latency_ms=0.0,
            )
        if self.spend is not None and self.spend.limit.blocks(tag.evaluation_id):
            return self._skipped(self.spend, request, request_hash, [])
        future = asyncio.get_running_loop().create_future()
        if self.cache.enabled:
            self.inflight[request_hash] = future
        outcome = _failed(request, request_hash, "cancelled", 0)
        try:
            outcome = await self._call_api(request, request_hash, tag)
            if outcome.status == OK and outcome.result is not None and outcome.saved is not None:
                self.cache.put(
                    request_hash, text_hash, request.stage, request.model, outcome.result, outcome.saved, context_hash
                )
            return outcome
        finally:
            # answered or failed: calls = cache hits + finished + skipped + in flight
            self.stats["api_finished"] += outcome.status != SKIPPED
            future.set_result(outcome)
            if self.inflight.get(request_hash) is future:
                del self.inflight[request_hash]

    async def _call_api(self, request: LlmRequest, request_hash: str, tag: CallTag) -> CallOutcome:
        attempts: list[Attempt] = []
        verdicts: list[Verdict] = []
        tokens = min(estimate_tokens(request.text()), self.token_limiter.max_rate)
        retries = self.settings.retries

        def worth_retrying(err: BaseException) -> bool:
            if isinstance(err, RejectedAnswer):
                rejected = sum(a.outcome == REJECTED for a in attempts)
                return not err.final and rejected < retries.max_rejected_attempts
            return is_retryable(err)

        # tenacity's stop/retry/wait/reraise policy as a plain loop: an AsyncRetrying object per call costs more than
        # the loop, and all but a few calls succeed on the first attempt.
        labels = (
            request_labels(request.stage, tag.evaluation_id, self.partition_date, self.labels) if self.vertex else None
        )
        error = None
        number = 0
        try:
            while True:
                number += 1
                try:
                    rejected = next((a for a in reversed(attempts) if a.outcome == REJECTED), None)
                    sent = request.with_reminder(rejected.reason or "", len(attempts) + 1) if rejected else request
                    spend = self.spend
                    reservation = await self._reserve(spend, request, tag) if spend is not None else None
                    attempt, settled = None, reservation is None
                    try:
                        await self.request_limiter.acquire()
                        await self.token_limiter.acquire(tokens)
                        async with self.semaphore:
                            attempt = Attempt(
                                uuid.uuid4().hex,
                                tag.call_id,
                                self.run_id,
                                self.partition_date,
                                tag.evaluation_id,
                                tag.turn_id,
                                request.stage,
                                request.model,
                                self.endpoint_id,
                                request_hash,
                                len(attempts) + 1,
                                time.time(),
                                labels=labels,
                            )
                            attempts.append(attempt)
                            self.ledger.sent(attempt)
                            started = time.perf_counter()
                            try:
                                response = await self.client.aio.models.generate_content(
                                    model=request.model,
                                    contents=request_contents(sent),
                                    config=self.content_config(sent, labels),
                                )
                            except BaseException as err:
                                attempt.latency_ms = (time.perf_counter() - started) * 1000
                                _record_error(attempt, err, self.redact)
                                self.ledger.done(attempt)
                                if not settled:
                                    settled = self._settle(spend, reservation, attempt)
                                raise
                            attempt.latency_ms = (time.perf_counter() - started) * 1000
                        verdicts.append(self._record_answer(attempt, request, sent, response))
                        if attempt.served_tier is None and (asked := self.settings.processing.requested_tier()):
                            # The Gemini API does not say which tier served an answer: it is billed at the one asked.
                            attempt.served_tier = SERVED_AS[asked]
                        self.ledger.done(attempt)
                        if not settled:
                            settled = self._settle(spend, reservation, attempt)
                    finally:
                        if not settled:  # raised before the attempt left (cost 0) or was recorded (held stands)
                            self._release(spend, reservation, None if attempt is not None else Decimal(0))
                    if attempt.outcome == REJECTED:
                        raise RejectedAnswer(attempt.reason or "rejected", verdicts[-1].final)
                    break
                except BaseException as err:
                    if not worth_retrying(err) or number >= retries.max_attempts:
                        raise
                    await asyncio.sleep(self._wait(_retry_state(number, err)))
        except BudgetExhausted:
            assert self.spend is not None, "only a spend limit stops a call"
            return self._skipped(self.spend, request, request_hash, attempts)
        except Exception as err:  # every failure becomes a row; nothing escapes as a lost turn
            error = self.redact(
                f"rejected: {err}" if isinstance(err, RejectedAnswer) else f"{type(err).__name__}: {err}"
            )
        return self._outcome(request, request_hash, attempts, None if error else verdicts[-1], error)

    def _record_answer(self, attempt: Attempt, request: LlmRequest, sent: LlmRequest, response) -> Verdict:
        """Fill in a 200's usage and verdict: billed whatever the verdict."""
        try:
            verdict = judge(request.stage, response)
        except Exception as err:  # an answer we cannot even read is still billed: a rejection, never a lost attempt
            verdict = Verdict(False, None, f"unreadable answer: {type(err).__name__}: {err}"[:200])
        usage, unknown = answer_usage(response.usage_metadata, sent.text(), verdict.answer_text)
        self.stats["estimated"] += usage.source == ESTIMATED
        record_answer(attempt, response, usage, unknown, verdict)
        return verdict

    async def _reserve(self, spend: SpendGuard, request: LlmRequest, tag: CallTag):
        """The budget's hold on one attempt; waits while attempts in flight must settle first; raises when over."""
        while (reservation := spend.limit.reserve(tag.evaluation_id, spend.forecast(request))) == WAIT:
            settled = self._budget_settled
            await settled.wait()
        if reservation is None:
            raise BudgetExhausted(spend.limit.exhausted)
        return reservation

    def _settle(self, spend: SpendGuard | None, reservation, attempt: Attempt) -> bool:
        if spend is not None:
            self._release(spend, reservation, spend.cost(attempt))
        return True

    def _release(self, spend: SpendGuard | None, reservation, cost: Decimal | None) -> None:
        """The reservation gives way to the attempt's cost (None: unknown, the reservation counts); waiters wake."""
        if spend is None:
            return
        spend.limit.settle(reservation, cost)
        self._budget_settled.set()
        self._budget_settled = asyncio.Event()

    def _skipped(
        self, spend: SpendGuard, request: LlmRequest, request_hash: str, attempts: list[Attempt]
    ) -> CallOutcome:
        """A call the budget stopped: nothing more is sent; attempts already made (rejected answers) stay billed."""
        self.stats["skipped"] += 1
        spend.limit.skip(request.stage)
        outcome = self._outcome(request, request_hash, attempts, None, "budget", counted=False)
        return replace(outcome, status=SKIPPED)

    def _outcome(
        self,
        request: LlmRequest,
        request_hash: str,
        attempts: list[Attempt],
        verdict: Verdict | None,
        error: str | None,
        counted: bool = True,
    ) -> CallOutcome:
        billed = [a for a in attempts if a.billed is not False]
        usage = sum((a.usage for a in billed[1:]), billed[0].usage) if billed else NO_USAGE
        rejected = sum(a.outcome == REJECTED for a in attempts)
        unknown = sum(a.billed is None for a in attempts)
        stats = self.stats
        stats["api_calls"] += len(attempts)
        stats["retries"] += max(0, len(attempts) - 1)
        stats["rejected"] += rejected
        for kind in ("input_tokens", "output_tokens", "thinking_tokens", "cached_tokens", "tool_prompt_tokens"):
            stats[kind] += getattr(usage, kind)
        last = attempts[-1] if attempts else None
        common: dict[str, Any] = dict(
            attempts=len(attempts),
            billed_attempts=len(billed),
            rejected_attempts=rejected,
            billing_unknown_attempts=unknown,
            model_version=last.model_version if last else None,
            served_tier=call_served_tier(attempts),
            latency_ms=last.latency_ms if last else None,
        )
        if error is not None or verdict is None or last is None:
            stats["failures"] += counted
            return CallOutcome(
                request_hash, request.stage, request.model, FAILED, None, usage, error=error or "no answer", **common
            )
        return CallOutcome(
            request_hash, request.stage, request.model, OK, verdict.result, usage, saved=last.usage, **common
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff with jitter, but never sooner than the server asked; no wait before a reminder."""
        err = state.outcome.exception() if state.outcome is not None else None
        if isinstance(err, RejectedAnswer):
            return 0.0
        return max(self.backoff(state), server_retry_delay(err) or 0.0)

    def content_config(self, request: LlmRequest, labels: dict[str, str] | None = None) -> types.GenerateContentConfig:
        """The SDK config of `request` (built once per stage, model, seed and labels): what standard and batch calls
        send."""
        key = (request.stage, request.model, request.generation_config.get("seed"), _frozen(labels))
        if key not in self._configs:
            self._configs[key] = content_config(request, labels, self.settings.processing.requested_tier())
        return self._configs[key]

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def aclose(self) -> None:
        await self.client.aio.aclose()


def record_answer(attempt: Attempt, response, usage: Usage, unknown: str | None, verdict: Verdict) -> None:
    """A 200 on its attempt: billed (or billing unknown, with why), the served model as prices name it, the verdict."""
    attempt.http_status, attempt.billed, attempt.usage = 200, None if unknown else True, usage
    attempt.model_version, attempt.response_id = normalized_model(response.model_version), response.response_id
    attempt.served_tier = served_tier(response.usage_metadata)
    attempt.outcome = ACCEPTED if verdict.accepted else REJECTED
    attempt.reason = "; ".join(reason for reason in (verdict.reason, unknown) if reason) or None


def _frozen(labels: dict[str, str] | None) -> tuple | None:
    return tuple(sorted(labels.items())) if labels else None


def call_served_tier(attempts: list[Attempt]) -> str | None:
    """The one tier every billed attempt of a call was served at; attempts served at different tiers give
    their tiers joined by `+`, a tier no price list has, so the call's cost is missing, never a guess."""
    standard = STANDARD_TRAFFIC_TYPES | {ON_DEMAND}
    served = [attempt.served_tier or ON_DEMAND for attempt in attempts if attempt.billed]
    tiers = sorted(set(served) - standard)
    on_demand = any(tier in standard for tier in served)
    return "+".join([ON_DEMAND] * (on_demand and bool(tiers)) + tiers) or None


def served_tier(usage_metadata) -> str | None:
    """The traffic type an answer was served at, as Vertex AI names it (`ON_DEMAND_FLEX`, ...); None when unsaid."""
    traffic = getattr(usage_metadata, "traffic_type", None)
    return None if traffic is None else str(getattr(traffic, "value", traffic))


def _record_error(attempt: Attempt, err: BaseException, redact) -> None:
    """An attempt that got no usable 200: not billed, except a cut-off 200 body, whose billing is unknown."""
    attempt.outcome = ERROR
    if is_cut_off_body(err):
        attempt.http_status, attempt.billed = 200, None
        attempt.usage = Usage(source=UNKNOWN)
        attempt.reason = "body cut off mid-JSON: billed by the provider for usage we never saw (billing unknown)"
    elif isinstance(err, pydantic.ValidationError):  # only a 200's body is validated
        attempt.http_status, attempt.billed = 200, None
        attempt.usage = Usage(source=UNKNOWN)
        attempt.reason = redact(
            f"answer google-genai could not read, billed for usage we never saw (billing unknown): {err}"
        )[:200]
    elif isinstance(err, errors.APIError):
        attempt.http_status, attempt.reason = err.code, redact(f"{err.code} {err.status}")
    elif isinstance(err, asyncio.CancelledError):
        attempt.billed, attempt.usage = None, Usage(source=UNKNOWN)
        attempt.reason = "cancelled in flight: billing unknown"
    else:
        attempt.reason = redact(f"{type(err).__name__}: {err}")[:200] or type(err).__name__


def is_retryable(err: BaseException) -> bool:
    """Rate limits, server errors, transport failures (timeouts included) and broken bodies are worth another
    attempt."""
    if isinstance(err, errors.APIError):
        return err.code in RETRYABLE_STATUS
    return _is_transport_error(err) or is_cut_off_body(err) or isinstance(err, asyncio.TimeoutError)


def is_cut_off_body(err: BaseException) -> bool:
    """A 200 whose body is not whole JSON (cut off in transit): google-genai raises the JSON decoder's error."""
    return isinstance(err, (json.JSONDecodeError, errors.UnknownApiResponseError))


def server_retry_delay(err: BaseException | None) -> float | None:
    """The `RetryInfo.retryDelay` a 429 carries, in seconds."""
    if not isinstance(err, errors.APIError) or not isinstance(err.details, dict):
        return None
    body = err.details.get("error", err.details)
    for detail in body.get("details") or []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("RetryInfo"):
            found = re.fullmatch(r"([\d.]+)s", str(detail.get("retryDelay", "")))
            if found:
                return float(found.group(1))
    return None


def _is_transport_error(err: BaseException) -> bool:
    # The SDK runs on httpx2 (or httpx); both name their transport failures TransportError.
    return any(cls.__name__ in {"TransportError", "TimeoutException"} for cls in type(err).__mro__)


_RETRYING = tenacity.Retrying()
"""The retry object a state names; the loop above is the policy, so nothing of it is used."""


def _retry_state(number: int, err: BaseException) -> tenacity.RetryCallState:
    """The state tenacity would hand its wait strategy after attempt `number` failed with `err`."""
    state = tenacity.RetryCallState(_RETRYING, None, (), {})
    state.attempt_number = number
    state.set_exception((type(err), err, err.__traceback__))
    return state


def known_secrets(api_key: str | None = None) -> list[str]:
    """Every API key this process knows: the resource's, then the environment's."""
    return [key for key in (api_key, *(os.environ.get(name) for name in API_KEY_ENVS)) if key]


def redact(text: str, secrets: list[str]) -> str:
    """Error text with every known secret removed, cut to a readable length."""
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text[:ERROR_TEXT_LIMIT]


def _per_second_limiter(per_minute: int) -> AsyncLimiter:
    """A limiter that spreads a per-minute quota over seconds, so no minute sees a burst."""
    per_second = per_minute / 60
    if per_second >= 1:
        return AsyncLimiter(per_second, 1)
    return AsyncLimiter(1, 1 / per_second)


def _failed(request: LlmRequest, request_hash: str, error: str, attempts: int) -> CallOutcome:
    return CallOutcome(
        request_hash, request.stage, request.model, FAILED, None, NO_USAGE, attempts=attempts, error=error
    )
