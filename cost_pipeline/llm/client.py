"""The Gemini resource: google-genai's async client under limits, retries and a response cache.

`GeminiResource` is the configuration a person sets in the UI; `GeminiSession` is what
one run uses inside its event loop. Every call returns a `CallOutcome` (result, usage,
attempts, latency, status), never an exception, so a failed call becomes a `failed`
row instead of a lost turn.

Retries are tenacity's (the SDK's own dependency) at this level rather than the SDK's
`HttpRetryOptions`, for two reasons the SDK cannot serve: every attempt must pass the
rate limiters again (SDK-internal retries would bypass them and overshoot the quota),
and a 429's `RetryInfo.retryDelay` must be honoured (the SDK waits only its own
exponential backoff). Rate limits use aiolimiter: requests evenly spaced, prompt tokens
in one-second buckets, so a minute's quota is never spent in a burst.

With no API key and no base URL, setup starts the shipped Gemini-compatible server on
loopback; a key alone talks to the real API, a `base_url` (or the SDK's own
`GOOGLE_GEMINI_BASE_URL`) points anywhere else. The key never reaches logs, metadata,
tables or error text: errors pass through `redact` before they are kept.
"""

import asyncio
import os
import re
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

import dagster as dg
import tenacity
from aiolimiter import AsyncLimiter
from google import genai
from google.genai import errors, types
from pydantic import Field, PrivateAttr

from cost_pipeline.config import API_KEY_ENVS, DEFAULT_DB
from cost_pipeline.llm.cache import CachedResponse, ResponseCache
from cost_pipeline.llm.local_server import ServerConfig, running_local_server
from cost_pipeline.llm.prompts import CLEAN, LlmRequest, parse_cleaning, parse_function
from cost_pipeline.llm.tools import TOOLS
from cost_pipeline.llm.usage import CACHE, Usage, estimate_tokens, estimate_usage, usage_from_metadata

DEFAULT_MODEL = "gemini-2.5-flash-lite"
LOCAL_PLACEHOLDER_KEY = "local-server-needs-no-key"
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
ERROR_TEXT_LIMIT = 500
OK, FAILED = "ok", "failed"


class GeminiResource(dg.ConfigurableResource):
    """Gemini through google-genai: models per stage, limits, retries and the response cache."""

    api_key: str | None = Field(default=None, description="Gemini API key (GEMINI_API_KEY); none: the local server.")
    base_url: str | None = Field(default=None, description="A Gemini-compatible endpoint instead of Google's.")
    clean_model: str = Field(default=DEFAULT_MODEL, description="Model that cleans every turn.")
    function_model: str = Field(default=DEFAULT_MODEL, description="Model that decides function calls for user turns.")
    thinking_budget: int | None = Field(default=None, description="Thinking tokens allowed; none: the model's default.")
    context_turns: int = Field(default=6, description="Earlier cleaned turns sent as context when cleaning.")
    max_concurrency: int = Field(default=32, description="Requests in flight at once.")
    requests_per_minute: int = Field(default=4_000, description="Request rate limit.")
    tokens_per_minute: int = Field(default=4_000_000, description="Prompt-token rate limit.")
    timeout_s: float = Field(default=30.0, description="Per-attempt HTTP timeout.")
    max_attempts: int = Field(default=5, description="Attempts per call, first included.")
    initial_backoff_s: float = Field(default=0.5, description="First retry wait; doubles, with jitter.")
    max_backoff_s: float = Field(default=30.0, description="Longest wait between attempts.")
    cache_enabled: bool = Field(default=True, description="Serve identical requests from the response cache.")
    cache_database: str = Field(default=DEFAULT_DB, description="DuckDB file holding the response cache.")
    local_server_latency_ms: float = Field(default=0.0, description="Latency of the auto-started local server.")

    _exit_stack: ExitStack = PrivateAttr(default_factory=ExitStack)
    _local_url: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.needs_local_server():
            self._local_url = self._exit_stack.enter_context(
                running_local_server(ServerConfig(latency_ms=self.local_server_latency_ms))
            )
            if context.log:
                context.log.info(f"no API key: using the local Gemini-compatible server at {self._local_url}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._exit_stack.close()

    def needs_local_server(self) -> bool:
        return not (self.api_key or self.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL"))

    def endpoint(self) -> str | None:
        """Where calls go; None means the SDK's default (Google, or GOOGLE_GEMINI_BASE_URL)."""
        return self.base_url or self._local_url

    def session(self, cache: ResponseCache) -> "GeminiSession":
        """A session for one run; create it inside the event loop that will use it."""
        if self.needs_local_server() and not self._local_url:
            raise RuntimeError("no API key or base URL, and the local server was not started (use the resource via Dagster)")
        return GeminiSession(self, cache)


@dataclass
class CallOutcome:
    """One logical call: its answer or final error, what it cost in tokens, and how it went."""

    request_hash: str
    stage: str
    model: str
    status: str
    result: dict | None
    usage: Usage
    saved: Usage | None = None
    cache_hit: bool = False
    attempts: int = 0
    latency_ms: float | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)


class GeminiSession:
    """The run-time half of the resource: one genai client, limiters, cache and counters."""

    def __init__(self, settings: GeminiResource, cache: ResponseCache):
        self.settings = settings
        self.cache = cache
        # Every key this process knows, first the resource's: the one used, and the ones to redact.
        self._secrets = [key for key in (settings.api_key, *(os.environ.get(n) for n in API_KEY_ENVS)) if key]
        self.client = genai.Client(
            api_key=self._secrets[0] if self._secrets else LOCAL_PLACEHOLDER_KEY,
            http_options=types.HttpOptions(base_url=settings.endpoint(), timeout=int(settings.timeout_s * 1000)),
        )
        self.semaphore = asyncio.Semaphore(settings.max_concurrency)
        # Requests are spaced evenly (a bucket of one), so no 60-second window exceeds the limit;
        # tokens drain per second, as a request's weight can be far above one token.
        self.request_limiter = AsyncLimiter(1, 60 / settings.requests_per_minute)
        self.token_limiter = _per_second_limiter(settings.tokens_per_minute)
        self.backoff = tenacity.wait_exponential_jitter(initial=settings.initial_backoff_s, max=settings.max_backoff_s)
        self.inflight: dict[str, asyncio.Future] = {}
        self.stats: Counter = Counter()
        self.latencies_ms: list[float] = []
        self._configs: dict[tuple, types.GenerateContentConfig] = {}

    async def call(self, request: LlmRequest, text_hash: str) -> CallOutcome:
        """Answer `request` from the cache, from an identical call in flight, or from Gemini."""
        request_hash = request.request_hash()
        self.stats["calls"] += 1
        cached = self.cache.get(request_hash)
        if cached is None and self.cache.enabled and request_hash in self.inflight:
            first = await asyncio.shield(self.inflight[request_hash])
            if first.status == OK:
                cached = self.cache.get(request_hash) or CachedResponse(first.result, first.usage)
        if cached is not None:
            self.stats["cache_hits"] += 1
            return CallOutcome(request_hash, request.stage, request.model, OK, cached.result,
                               Usage(source=CACHE), saved=cached.usage, cache_hit=True, latency_ms=0.0)
        future = asyncio.get_running_loop().create_future()
        if self.cache.enabled:
            self.inflight[request_hash] = future
        outcome = _failed(request, request_hash, "cancelled", 0)
        try:
            outcome = await self._call_api(request, request_hash)
            if outcome.status == OK:
                self.cache.put(request_hash, text_hash, request.stage, request.model, outcome.result, outcome.usage)
            return outcome
        finally:
            future.set_result(outcome)
            if self.inflight.get(request_hash) is future:
                del self.inflight[request_hash]

    async def _call_api(self, request: LlmRequest, request_hash: str) -> CallOutcome:
        attempts = 0
        latency_ms = None
        tokens = min(estimate_tokens(request.text()), self.token_limiter.max_rate)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(is_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self.request_limiter.acquire()
                    await self.token_limiter.acquire(tokens)
                    async with self.semaphore:
                        started = time.perf_counter()
                        response = await self.client.aio.models.generate_content(
                            model=request.model, contents=_contents(request), config=self._config(request)
                        )
                        latency_ms = (time.perf_counter() - started) * 1000
                    result, answer_text = _parse(request, response)
        except Exception as err:  # every failure becomes a row; nothing escapes as a lost turn
            self.stats["api_calls"] += attempts
            self.stats["retries"] += max(0, attempts - 1)
            self.stats["failures"] += 1
            return _failed(request, request_hash, self.redact(f"{type(err).__name__}: {err}"), attempts)
        self.stats["api_calls"] += attempts
        self.stats["retries"] += attempts - 1
        usage = usage_from_metadata(response.usage_metadata)
        if usage is None:
            usage = estimate_usage(request.text(), answer_text)
            self.stats["estimated"] += 1
        self.latencies_ms.append(latency_ms)
        for kind in ("input_tokens", "output_tokens", "thinking_tokens", "cached_tokens", "tool_prompt_tokens"):
            self.stats[kind] += getattr(usage, kind)
        return CallOutcome(request_hash, request.stage, request.model, OK, result, usage, attempts=attempts, latency_ms=latency_ms)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff with jitter, but never sooner than the server asked."""
        return max(self.backoff(state), server_retry_delay(state.outcome.exception()) or 0.0)

    def _config(self, request: LlmRequest) -> types.GenerateContentConfig:
        key = (request.stage, request.model)
        if key not in self._configs:
            options = dict(request.generation_config)
            budget = options.pop("thinking_budget", None)
            self._configs[key] = types.GenerateContentConfig(
                system_instruction=request.system_instruction,
                thinking_config=types.ThinkingConfig(thinking_budget=budget) if budget is not None else None,
                tools=TOOLS if request.with_tools else None,
                automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True) if request.with_tools else None,
                **options,
            )
        return self._configs[key]

    def redact(self, text: str) -> str:
        """Error text with every known secret removed, cut to a readable length."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text[:ERROR_TEXT_LIMIT]

    async def aclose(self) -> None:
        await self.client.aio.aclose()


def is_retryable(err: BaseException) -> bool:
    """Rate limits, server errors, transport failures (timeouts included) and broken bodies are worth another attempt."""
    if isinstance(err, errors.APIError):
        return err.code in RETRYABLE_STATUS
    # UnknownApiResponseError: a 200 whose body is not JSON (cut off in transit).
    return _is_transport_error(err) or isinstance(err, (asyncio.TimeoutError, MalformedResponse, errors.UnknownApiResponseError))


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


class MalformedResponse(ValueError):
    """A 200 response whose body is not the answer we asked for (truncated or off-format)."""


def _is_transport_error(err: BaseException) -> bool:
    # The SDK runs on httpx2 (or httpx); both name their transport failures TransportError.
    return any(cls.__name__ in {"TransportError", "TimeoutException"} for cls in type(err).__mro__)


def _parse(request: LlmRequest, response: types.GenerateContentResponse) -> tuple[dict, str]:
    try:
        if request.stage == CLEAN:
            text = response.text
            return parse_cleaning(text), text or ""
        calls = response.function_calls
        text = None if calls else response.text
        result = parse_function(calls, text)
        return result, str(result)
    except ValueError as err:
        raise MalformedResponse(str(err)) from None


def _contents(request: LlmRequest) -> list[types.Content]:
    return [types.Content(role="user", parts=[types.Part(text=part) for part in parts]) for parts in request.contents]


def _per_second_limiter(per_minute: int) -> AsyncLimiter:
    """A limiter that spreads a per-minute quota over seconds, so no minute sees a burst."""
    per_second = per_minute / 60
    if per_second >= 1:
        return AsyncLimiter(per_second, 1)
    return AsyncLimiter(1, 1 / per_second)


def _failed(request: LlmRequest, request_hash: str, error: str, attempts: int) -> CallOutcome:
    return CallOutcome(request_hash, request.stage, request.model, FAILED, None, Usage(source="none"),
                       attempts=attempts, error=error)
