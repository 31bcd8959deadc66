"""What a Gemini run is configured with, in sections: endpoint, models, limits, retries, cache, processing.

Plain pydantic models, free of Dagster: the session, the forecast and the CLI read them,
and `defs/gemini/resource.py` makes each a section of the `gemini` resource's config, so
the launchpad shows the same fields, defaults and descriptions. Fields left unset that
name a key, URL or file resolve from the environment when a run starts, not when the code
location loads: run config that changes one field replaces what `Definitions` took from
the environment with these defaults, and they must still mean "what this deployment set".
"""

import os
from dataclasses import dataclass, field

from google import genai
from google.genai import types
from pydantic import BaseModel, Field

from cost_pipeline.config import (
    API_KEY_ENVS,
    BASE_URL_ENV,
    BILLING_ENV,
    CLEAN_MODEL_ENV,
    CREDENTIALS_ENV,
    DB_ENV,
    DEFAULT_BILLING,
    DEFAULT_LOCATION,
    FUNCTION_MODEL_ENV,
    LOCATION_ENV,
    PROJECT_ENV,
    THINKING_BUDGET_ENV,
    VERTEX_BASE_URL_ENV,
    VERTEX_ENVS,
    resolved,
    store,
)
from cost_pipeline.gemini.batch.files import INLINE_LIMIT_BYTES

DEFAULT_MODEL = "gemini-2.5-flash-lite"
LOCAL_PLACEHOLDER_KEY = "local-server-needs-no-key"
LOCAL_ENDPOINT = "local-server"
GOOGLE_ENDPOINT = "https://generativelanguage.googleapis.com"
STANDARD, BATCH = "standard", "batch"
SERVICE_TIERS = (STANDARD, "flex", "priority")
"""The tiers a request can ask for (google-genai's `service_tier`); the answer's served tier is what is priced."""
"""Processing modes; `batch` is genai-prices' batch price variant (the Batch API: half the input and output rates)."""
PROCESSING_MODES = (STANDARD, BATCH)

FREE_TIER_RPM, FREE_TIER_TPM = 10, 250_000
"""Below the Gemini API free tier's limits for the Flash and Flash-Lite models: a new key never meets a 429 storm."""
OTHER_ENDPOINT_RPM, OTHER_ENDPOINT_TPM = 4_000, 4_000_000


class EndpointSettings(BaseModel):
    """Where calls go: Google's Gemini API with a key, Vertex AI, a Gemini-compatible base URL, or the local server."""

    api_key: str | None = Field(
        default=None, description=f"Gemini API key; unset: {' or '.join(API_KEY_ENVS)} at run time."
    )
    base_url: str | None = Field(
        default=None, description=f"A Gemini-compatible endpoint; unset: {BASE_URL_ENV} at run time."
    )
    vertexai: bool | None = Field(
        default=None,
        description=f"Call Gemini on Vertex AI; unset: {' or '.join(VERTEX_ENVS)} at run time, as google-genai reads "
        "them. Credentials: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, or the environment's), "
        "or an API key alone (express mode) when no project is set.",
    )
    project: str | None = Field(default=None, description=f"Vertex AI project; unset: {PROJECT_ENV} at run time.")
    location: str | None = Field(
        default=None, description=f"Vertex AI location; unset: {LOCATION_ENV}, else {DEFAULT_LOCATION}, at run time."
    )
    vertex_base_url: str | None = Field(
        default=None, description=f"A Vertex-compatible endpoint; unset: {VERTEX_BASE_URL_ENV} at run time."
    )
    use_local_server: bool = Field(default=False, description="Use the shipped local server even when a key is set.")
    local_server_latency_ms: float = Field(default=0.0, description="Latency of the auto-started local server.")
    local_billing_folder: str | None = Field(
        default=None,
        description=f"Where the auto-started local server's invoice (a Cloud Billing export) is written "
        f"when the run ends; unset: {BILLING_ENV} at run time.",
    )

    def resolved_api_key(self) -> str | None:
        return self.api_key or next((os.environ[n] for n in API_KEY_ENVS if os.environ.get(n)), None)

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get(BASE_URL_ENV) or None

    def billing_folder(self) -> str:
        return self.local_billing_folder or resolved(BILLING_ENV, DEFAULT_BILLING)

    def on_vertex(self) -> bool:
        """Vertex AI, as configured or as google-genai's switches say (`GOOGLE_GENAI_USE_ENTERPRISE` first)."""
        if self.vertexai is not None:
            return self.vertexai
        switch = next((os.environ[name] for name in VERTEX_ENVS if os.environ.get(name)), "")
        return switch.strip().lower() in ("true", "1")

    def resolved_project(self) -> str | None:
        return self.project or os.environ.get(PROJECT_ENV) or None

    def resolved_location(self) -> str:
        return self.location or os.environ.get(LOCATION_ENV) or DEFAULT_LOCATION

    def resolved_vertex_base_url(self) -> str | None:
        return self.vertex_base_url or os.environ.get(VERTEX_BASE_URL_ENV) or None

    def express_mode(self) -> bool:
        """Vertex with an API key and no project: google-genai's express mode (no project, location or ADC)."""
        return self.on_vertex() and not self.resolved_project() and bool(self.resolved_api_key())

    def needs_local_server(self) -> bool:
        if self.use_local_server:
            return True
        return not (self.on_vertex() or self.resolved_api_key() or self.resolved_base_url())

    def problem(self) -> str | None:
        """Why this endpoint cannot be called, in one sentence, or None."""
        if self.needs_local_server() or not self.on_vertex():
            return None
        if not (self.resolved_project() or self.resolved_api_key()):
            return (
                f"Vertex AI is on ({' or '.join(VERTEX_ENVS)}) but no project is set ({PROJECT_ENV}) and no API key "
                "for express mode: set the project, with credentials from Application Default Credentials"
            )
        return None

    def endpoint_id(self) -> str:
        """Who answers, as stored with every call and in the cache key: stable across runs and ports."""
        if self.needs_local_server():
            return LOCAL_ENDPOINT
        if self.on_vertex():
            where = "express" if self.express_mode() else f"{self.resolved_project()}/{self.resolved_location()}"
            base = self.resolved_vertex_base_url()
            return f"vertex:{where}" + (f"@{base}" if base else "")
        return self.resolved_base_url() or GOOGLE_ENDPOINT

    def credentials_source(self) -> str:
        """Where Vertex credentials come from, for the log: a variable's name or a mode, never a secret."""
        if self.express_mode():
            return f"API key from {self.key_source()} (express mode)"
        if os.environ.get(CREDENTIALS_ENV):
            return f"Application Default Credentials from the file {CREDENTIALS_ENV} names"
        return "Application Default Credentials from the environment"

    def key_source(self) -> str:
        """Where the key came from, for the log: never the key itself."""
        if self.api_key:
            return "the resource's config"
        return next((n for n in API_KEY_ENVS if os.environ.get(n)), "nowhere")


class ModelSettings(BaseModel):
    """Which model does each stage, and what it is sent."""

    clean_model: str = Field(default=DEFAULT_MODEL, description="Model that cleans every turn.")
    function_model: str = Field(default=DEFAULT_MODEL, description="Model that decides function calls for user turns.")
    thinking_budget: int | None = Field(default=None, description="Thinking tokens allowed; none: the model's default.")
    context_turns: int = Field(default=6, description="Earlier cleaned turns sent as context when cleaning.")

    def window(self, earlier: list) -> list:
        """The last `context_turns` of a conversation's earlier turns: what a cleaning is sent as context."""
        return earlier[-self.context_turns :] if self.context_turns else []


class RateLimits(BaseModel):
    """How fast calls go: requests in flight, requests and prompt tokens a minute."""

    max_concurrency: int = Field(default=32, description="Requests in flight at once.")
    requests_per_minute: int | None = Field(
        default=None,
        description=f"Request rate limit; unset: {FREE_TIER_RPM} when calls go to Google's API (a free-tier "
        f"quota accepts it), {OTHER_ENDPOINT_RPM:,} for the local server or a base URL.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        description=f"Prompt-token rate limit; unset: {FREE_TIER_TPM:,} for Google's API, "
        f"{OTHER_ENDPOINT_TPM:,} otherwise.",
    )

    def request_limit(self, endpoint_id: str) -> int:
        """Requests per minute: as configured, else safe for the endpoint (a free-tier key on Google's API)."""
        if self.requests_per_minute:
            return self.requests_per_minute
        return FREE_TIER_RPM if endpoint_id == GOOGLE_ENDPOINT else OTHER_ENDPOINT_RPM

    def token_limit(self, endpoint_id: str) -> int:
        if self.tokens_per_minute:
            return self.tokens_per_minute
        return FREE_TIER_TPM if endpoint_id == GOOGLE_ENDPOINT else OTHER_ENDPOINT_TPM


class RetrySettings(BaseModel):
    """How long an attempt may take and how many a call may make, rejected answers included."""

    timeout_s: float = Field(default=30.0, description="Per-attempt HTTP timeout.")
    max_attempts: int = Field(default=5, description="Attempts per call, first included, rejected answers included.")
    max_rejected_attempts: int = Field(
        default=2, description="Paid answers a call may reject before it fails: caps what a turn spends on rejections."
    )
    initial_backoff_s: float = Field(default=0.5, description="First retry wait; doubles, with jitter.")
    max_backoff_s: float = Field(default=30.0, description="Longest wait between attempts.")


class CacheSettings(BaseModel):
    """The response cache, kept in the same DuckDB file as the spend ledger."""

    enabled: bool = Field(default=True, description="Serve identical requests from the response cache.")
    database: str | None = Field(
        default=None,
        description=f"DuckDB file of the response cache and the spend ledger; unset: {DB_ENV} at run time.",
    )

    def database_file(self) -> str:
        return self.database or store()


class ProcessingSettings(BaseModel):
    """Standard requests, or the Batch API at half the price."""

    # A str, not a Literal: it may come from an EnvVar (COST_PIPELINE_PROCESSING), resolved when a run starts.
    mode: str = Field(
        default=STANDARD,
        description="standard: one request at a time; batch: the Batch API at half the price, "
        "answered within hours (gemini_step/batch_day.py says what changes).",
    )
    service_tier: str = Field(
        default=STANDARD,
        description="standard, flex (cheaper, may wait or be refused when busy) or priority: the tier each request "
        "asks for, where the API offers it (COST_PIPELINE_SERVICE_TIER).",
    )
    batch_max_wait_s: float = Field(
        default=600.0,
        description="How long a batch step waits for its jobs; past it the step ends with them pending, "
        "and the batch_jobs_sensor (or any later run of the day) collects them.",
    )
    batch_poll_s: float = Field(default=10.0, description="How often a batch step asks whether its jobs are done.")
    batch_max_requests: int = Field(default=10_000, description="Requests per batch job.")
    batch_inline_max_bytes: int = Field(
        default=INLINE_LIMIT_BYTES,
        description="A batch job whose requests take more than this many bytes sends them as an "
        "uploaded JSON Lines file (Files API) instead of inline (the API's inline limit is 20 MB).",
    )

    def problem(self) -> str | None:
        """Why `mode` or `service_tier` cannot be used, or None."""
        if self.mode not in PROCESSING_MODES:
            modes = ", ".join(PROCESSING_MODES)
            return f"processing mode is {self.mode!r}: it must be one of {modes} (COST_PIPELINE_PROCESSING)"
        if self.service_tier not in SERVICE_TIERS:
            tiers = ", ".join(SERVICE_TIERS)
            return f"service tier is {self.service_tier!r}: it must be one of {tiers} (COST_PIPELINE_SERVICE_TIER)"
        if self.mode == BATCH and self.service_tier != STANDARD:
            return f"the Batch API is a tier of its own: service tier {self.service_tier} cannot be asked in batch mode"
        return None

    def requested_tier(self) -> str | None:
        """The tier requests ask for, as google-genai's `service_tier` takes it; None for standard."""
        return None if self.service_tier == STANDARD else self.service_tier


@dataclass(frozen=True)
class GeminiSettings:
    """One run's Gemini settings, with the URL of the local server when it was started for the run."""

    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    limits: RateLimits = field(default_factory=RateLimits)
    retries: RetrySettings = field(default_factory=RetrySettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)
    local_url: str | None = None

    def endpoint_id(self) -> str:
        return self.endpoint.endpoint_id()

    def problem(self) -> str | None:
        """Why these settings cannot run, in one sentence, before any call; None when they can."""
        if problem := self.processing.problem() or self.endpoint.problem():
            return problem
        if self.processing.mode == BATCH and self.endpoint.on_vertex() and not self.endpoint.needs_local_server():
            return (
                "batch mode is not available on Vertex AI here: Vertex batch prediction reads its requests from Cloud "
                "Storage or BigQuery, which this pipeline does not manage; run standard, or use the Gemini API's "
                "Batch API with a key"
            )
        return None

    def base_url(self) -> str | None:
        """The base URL calls go to; None means the SDK's default, Google's API."""
        return self.local_url if self.endpoint.needs_local_server() else self.endpoint.resolved_base_url()

    def request_limit(self) -> int:
        return self.limits.request_limit(self.endpoint_id())

    def token_limit(self) -> int:
        return self.limits.token_limit(self.endpoint_id())

    def describe_endpoint(self) -> str:
        endpoint = self.endpoint
        if endpoint.needs_local_server():
            why = "chosen explicitly" if endpoint.use_local_server else "no API key, base URL or Vertex AI is set"
            return f"the local Gemini-compatible server at {self.local_url} ({why})"
        if endpoint.on_vertex():
            where = (
                "express mode"
                if endpoint.express_mode()
                else f"project {endpoint.resolved_project()}, location {endpoint.resolved_location()}"
            )
            base = endpoint.resolved_vertex_base_url()
            return (
                f"Vertex AI, {where}{f', at {base}' if base else ''} ({endpoint.credentials_source()}); "
                "every request carries labels"
            )
        if endpoint.resolved_base_url():
            return f"{endpoint.resolved_base_url()} (base URL)"
        return f"Google's Gemini API, {GOOGLE_ENDPOINT} (API key from {endpoint.key_source()})"

    def genai_client(self) -> genai.Client:
        """The google-genai client for this endpoint and key (a placeholder key for the local server)."""
        if self.endpoint.needs_local_server() and not self.local_url:
            raise RuntimeError("no API key or base URL, and the local server was not started for this run")
        key = self.endpoint.resolved_api_key()
        timeout = int(self.retries.timeout_s * 1000)
        if self.endpoint.on_vertex() and not self.endpoint.needs_local_server():
            # Every setting passed explicitly: google-genai honours a Vertex base URL only with vertexai=True, and
            # without a project and location it would post to the bare URL with no token.
            base = self.endpoint.resolved_vertex_base_url()
            if self.endpoint.express_mode():
                return genai.Client(
                    vertexai=True, api_key=key, http_options=types.HttpOptions(base_url=base, timeout=timeout)
                )
            return genai.Client(
                vertexai=True,
                project=self.endpoint.resolved_project(),
                location=self.endpoint.resolved_location(),
                http_options=types.HttpOptions(base_url=base, timeout=timeout),
            )
        return genai.Client(
            api_key=key if key and not self.endpoint.needs_local_server() else LOCAL_PLACEHOLDER_KEY,
            http_options=types.HttpOptions(base_url=self.base_url(), timeout=timeout),
        )


def settings_from_environment() -> GeminiSettings:
    """The endpoint and models a run would resolve now from this process's environment, for code outside Dagster."""
    budget = os.environ.get(THINKING_BUDGET_ENV)
    return GeminiSettings(
        models=ModelSettings(
            clean_model=resolved(CLEAN_MODEL_ENV, DEFAULT_MODEL),
            function_model=resolved(FUNCTION_MODEL_ENV, DEFAULT_MODEL),
            thinking_budget=int(budget) if budget else None,
        )
    )
