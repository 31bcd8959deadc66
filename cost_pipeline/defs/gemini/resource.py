"""The `gemini` resource: the Gemini settings as launchpad sections, and the local server for runs without a key.

Each section is the Dagster-free settings model of `gemini/settings.py` made a `dg.Config`,
so the launchpad shows the same fields, defaults and descriptions the session reads:
`{"resources": {"gemini": {"config": {"limits": {"max_concurrency": 8}}}}}`.
"""

import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from cost_pipeline.gemini.attempts import AttemptSink
from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini.client import GeminiSession
from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server
from cost_pipeline.gemini.settings import (
    CacheSettings,
    EndpointSettings,
    GeminiSettings,
    ModelSettings,
    ProcessingSettings,
    RateLimits,
    RetrySettings,
)


class Endpoint(dg.Config, EndpointSettings):
    """Where calls go: Google's API with a key, a Gemini-compatible base URL, or the shipped local server."""


class Models(dg.Config, ModelSettings):
    """Which model does each stage, and what it is sent."""


class Limits(dg.Config, RateLimits):
    """Requests in flight, requests and prompt tokens a minute."""


class Retries(dg.Config, RetrySettings):
    """Per-attempt timeout, attempts per call, backoff."""


class Cache(dg.Config, CacheSettings):
    """The response cache and the DuckDB file it shares with the spend ledger."""


class Processing(dg.Config, ProcessingSettings):
    """Standard requests, or the Batch API at half the price."""


class GeminiResource(dg.ConfigurableResource):
    """Gemini through google-genai: endpoint, models, limits, retries, cache and processing, one section each.

    With no API key and no base URL anywhere (or `endpoint.use_local_server`), each run starts
    the shipped Gemini-compatible server on loopback and, when the run ends, writes its
    billing export where real exports land, so the bill can be matched like Google's.
    """

    endpoint: Endpoint = Field(default_factory=Endpoint, description=EndpointSettings.__doc__)
    models: Models = Field(default_factory=Models, description=ModelSettings.__doc__)
    limits: Limits = Field(default_factory=Limits, description=RateLimits.__doc__)
    retries: Retries = Field(default_factory=Retries, description=RetrySettings.__doc__)
    cache: Cache = Field(default_factory=Cache, description=CacheSettings.__doc__)
    processing: Processing = Field(default_factory=Processing, description=ProcessingSettings.__doc__)

    _exit_stack: ExitStack = PrivateAttr(default_factory=ExitStack)
    _local_url: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        problem = self.settings().problem()
        if problem:
            raise dg.Failure(description=problem)
        if self.endpoint.needs_local_server():
            self._local_url = self._exit_stack.enter_context(
                running_local_server(ServerConfig(latency_ms=self.endpoint.local_server_latency_ms))
            )
        if context.log:
            settings = self.settings()
            context.log.info(
                f"Gemini calls go to {settings.describe_endpoint()}, at most {settings.request_limit():,} requests "
                f"and {settings.token_limit():,} prompt tokens a minute (COST_PIPELINE_RPM, COST_PIPELINE_TPM)"
            )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        try:
            if self._local_url:
                self._write_local_invoice(context)
        finally:
            self._exit_stack.close()

    def _write_local_invoice(self, context: dg.InitResourceContext) -> None:
        """The local server is the provider: its billing record of this run lands where real exports land."""
        with urllib.request.urlopen(f"{self._local_url}/admin/billing/export", timeout=30) as response:
            export = response.read()
        if export.count(b"\n") <= 1:
            return
        folder = Path(self.endpoint.billing_folder())
        folder.mkdir(parents=True, exist_ok=True)
        run_id = context.run.run_id if context.run else uuid.uuid4().hex
        path = folder / f"local-server-{run_id}.csv"
        path.write_bytes(export)
        if context.log:
            context.log.info(f"the local server's billing export for this run is in {path}")

    def settings(self) -> GeminiSettings:
        """The run's settings, with the local server's URL once setup has started it."""
        return GeminiSettings(
            self.endpoint, self.models, self.limits, self.retries, self.cache, self.processing, self._local_url
        )

    def session(
        self, cache: ResponseCache, ledger: AttemptSink | None = None, run_id: str = "", partition_date: str = ""
    ) -> GeminiSession:
        """A session for one run; create it inside the event loop that will use it."""
        return GeminiSession(self.settings(), cache, ledger, run_id, partition_date)
