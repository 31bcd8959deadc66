"""The embedded default's resources, from the environment: one DuckDB file, a landing folder, Gemini, cost settings.

A setting present in the environment reaches its resource as `dg.EnvVar`, so the UI shows
the variable's name rather than its value and each run resolves it at launch; the default
applies only when the variable is absent. The schedule, sensors and backfills get the same.
"""

import os
from pathlib import Path
from typing import overload

import dagster as dg

from cost_pipeline.config import (
    API_KEY_ENVS,
    BILLING_ENV,
    CLEAN_MODEL_ENV,
    CONCURRENCY_ENV,
    COSTS_ENV,
    DEFAULT_BILLING,
    DEFAULT_COSTS,
    DEFAULT_DB,
    DEFAULT_LANDING,
    FUNCTION_MODEL_ENV,
    LANDING_ENV,
    PROCESSING_ENV,
    RPM_ENV,
    SERVICE_TIER_ENV,
    THINKING_BUDGET_ENV,
    TPM_ENV,
    store_setting,
)
from cost_pipeline.defs.gemini.resource import Cache, Endpoint, GeminiResource, Limits, Models, Processing
from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.resources import BillingExports, CostSettings, LandingResource
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.gemini.settings import DEFAULT_MODEL, STANDARD, RateLimits


def local_resources() -> dict:
    """Every resource the definitions need, set from this process's environment."""
    variable, _ = store_setting()
    database = env_or_default(variable, DEFAULT_DB)
    return {
        "io_manager": DuckDBPartitionIOManager(database=database),
        "warehouse": DuckDBWarehouse(database=database),
        "landing": LandingResource(root=env_or_default(LANDING_ENV, DEFAULT_LANDING)),
        "gemini": GeminiResource(
            endpoint=Endpoint(api_key=gemini_api_key()),
            models=Models(
                clean_model=env_or_default(CLEAN_MODEL_ENV, DEFAULT_MODEL),
                function_model=env_or_default(FUNCTION_MODEL_ENV, DEFAULT_MODEL),
                thinking_budget=env_int_or_default(THINKING_BUDGET_ENV, None),
            ),
            limits=Limits(
                requests_per_minute=env_int_or_default(RPM_ENV, None),
                tokens_per_minute=env_int_or_default(TPM_ENV, None),
                max_concurrency=env_int_or_default(CONCURRENCY_ENV, RateLimits().max_concurrency),
            ),
            cache=Cache(database=database),
            processing=Processing(
                mode=env_or_default(PROCESSING_ENV, STANDARD), service_tier=env_or_default(SERVICE_TIER_ENV, STANDARD)
            ),
        ),
        "billing": BillingExports(folder=env_or_default(BILLING_ENV, DEFAULT_BILLING)),
        "costs": CostSettings(
            config_file=env_or_default(COSTS_ENV, DEFAULT_COSTS if Path(DEFAULT_COSTS).is_file() else None)
        ),
    }


@overload
def env_int_or_default(name: str, default: int) -> int: ...
@overload
def env_int_or_default(name: str, default: None) -> int | None: ...
def env_int_or_default(name: str, default: int | None) -> int | None:
    """`dg.EnvVar.int(name)` (an int, resolved at launch) when the variable is set, else the default."""
    return dg.EnvVar.int(name) if os.environ.get(name) else default


@overload
def env_or_default(name: str, default: str) -> str: ...
@overload
def env_or_default(name: str, default: None) -> str | None: ...
def env_or_default(name: str, default: str | None) -> str | None:
    """`dg.EnvVar(name)` (a str, resolved at launch) when the variable is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def gemini_api_key() -> dg.EnvVar | None:
    """The Gemini key as an `EnvVar` (never its value), or None to use the local server."""
    for name in API_KEY_ENVS:
        if os.environ.get(name):
            return dg.EnvVar(name)
    return None
