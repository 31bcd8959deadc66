"""Settings from the environment, each with a default that works on a laptop.

A setting that is present in the environment reaches resources as `dg.EnvVar`, so the
Dagster UI shows the variable's name rather than its value and each run resolves it
at launch; the default applies only when the variable is absent.
"""

import os

import dagster as dg

DB_ENV = "COST_PIPELINE_DB"
DEFAULT_DB = "data/cost_pipeline.duckdb"

LANDING_ENV = "COST_PIPELINE_LANDING"
DEFAULT_LANDING = "data/landing"

BILLING_ENV = "COST_PIPELINE_BILLING"
DEFAULT_BILLING = "data/billing"

COSTS_ENV = "COST_PIPELINE_COSTS"
DEFAULT_COSTS = "costs.toml"


def env_or_default(name: str, default: str | None) -> str | dg.EnvVar | None:
    """`dg.EnvVar(name)` when the variable is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def resolved(name: str, default: str) -> str:
    """The setting's value now, for code outside Dagster (the CLI)."""
    return os.environ.get(name) or default


API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BASE_URL_ENV = "GOOGLE_GEMINI_BASE_URL"
"""The SDK's own variable for a Gemini-compatible endpoint."""


def gemini_api_key() -> dg.EnvVar | None:
    """The Gemini key as an `EnvVar` (never its value), or None to use the local server."""
    for name in API_KEY_ENVS:
        if os.environ.get(name):
            return dg.EnvVar(name)
    return None
