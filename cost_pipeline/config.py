"""Settings from the environment, each with a default that works on a laptop.

Only names and defaults, free of Dagster: `defs/environment.py` hands a setting that is
present to resources as `dg.EnvVar`, so the UI shows the variable's name, never its value.
"""

import os
from datetime import date

DB_ENV = "COST_PIPELINE_DB"
DEFAULT_DB = "data/cost_pipeline.duckdb"
WAREHOUSE_ENV = "COST_PIPELINE_WAREHOUSE"
"""Unset: every table in the DuckDB file (COST_PIPELINE_DB). `ducklake:postgres:<libpq connection string>`: every
table in that DuckLake, whose data goes to COST_PIPELINE_LAKE_DATA (`storage/lake.py`)."""

LANDING_ENV = "COST_PIPELINE_LANDING"
DEFAULT_LANDING = "data/landing"

BILLING_ENV = "COST_PIPELINE_BILLING"
DEFAULT_BILLING = "data/billing"

COSTS_ENV = "COST_PIPELINE_COSTS"
DEFAULT_COSTS = "costs.toml"


DASHBOARD_URL_ENV = "COST_PIPELINE_DASHBOARD_URL"
DEFAULT_DASHBOARD_PORT = 3001
"""`make ui` serves the cost dashboard here, beside the UI's 3000 (`cost-pipeline dashboard --serve`)."""
DEFAULT_DASHBOARD_URL = f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}/"
"""Where the cost_dashboard asset's page links: a browser will not open a file:// link from the UI's http page."""

START_ENV = "COST_PIPELINE_START"
"""The first day of the daily partitions (YYYY-MM-DD): set it to the first day of your data."""
DEFAULT_START = "2026-10-01"
"""A fixed default, never one computed from today: a start that moves drops days from under running backfills."""


def partitions_start() -> str:
    """`COST_PIPELINE_START`, else `DEFAULT_START`: the first day every process (UI, daemon, runs) partitions.

    Only the person sets it (`.env` or the environment); no command rewrites it, so a UI
    started earlier and the CLI always agree on the partitions. A day before the start
    cannot be generated, run or backfilled, and the commands say so.
    """
    value = os.environ.get(START_ENV)
    if not value:
        return DEFAULT_START
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{START_ENV}={value!r} is not a day like 2026-11-01") from None


SCHEDULE_HOUR_ENV, SCHEDULE_TIMEZONE_ENV = "COST_PIPELINE_SCHEDULE_HOUR", "COST_PIPELINE_SCHEDULE_TIMEZONE"
SCHEDULE_HOUR = int(os.environ.get(SCHEDULE_HOUR_ENV, "2"))
SCHEDULE_TIMEZONE = os.environ.get(SCHEDULE_TIMEZONE_ENV, "UTC")
"""When the daily schedule runs yesterday's partition (read when the definitions load)."""

CLEAN_MODEL_ENV, FUNCTION_MODEL_ENV = "COST_PIPELINE_CLEAN_MODEL", "COST_PIPELINE_FUNCTION_MODEL"
THINKING_BUDGET_ENV = "COST_PIPELINE_THINKING_BUDGET"
RPM_ENV, TPM_ENV = "COST_PIPELINE_RPM", "COST_PIPELINE_TPM"
CONCURRENCY_ENV = "COST_PIPELINE_CONCURRENCY"
PROCESSING_ENV = "COST_PIPELINE_PROCESSING"
SERVICE_TIER_ENV = "COST_PIPELINE_SERVICE_TIER"


def resolved(name: str, default: str) -> str:
    """The setting's value now, for code outside Dagster (the CLI)."""
    return os.environ.get(name) or default


def store_setting() -> tuple[str, str]:
    """(the variable, its value): the warehouse when COST_PIPELINE_WAREHOUSE is set, else the DuckDB file."""
    if os.environ.get(WAREHOUSE_ENV):
        return WAREHOUSE_ENV, os.environ[WAREHOUSE_ENV]
    return DB_ENV, resolved(DB_ENV, DEFAULT_DB)


def store() -> str:
    """Where every table is, now: the DuckLake of COST_PIPELINE_WAREHOUSE, else the DuckDB file."""
    return store_setting()[1]


API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BASE_URL_ENV = "GOOGLE_GEMINI_BASE_URL"
VERTEX_ENVS = ("GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_USE_VERTEXAI")
"""google-genai's switches to Vertex AI (the Gemini Enterprise Agent Platform); the first one set wins, as in
the SDK."""
PROJECT_ENV, LOCATION_ENV = "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"
DEFAULT_LOCATION = "global"
VERTEX_BASE_URL_ENV = "GOOGLE_VERTEX_BASE_URL"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
"""The SDK's own variable for a Gemini-compatible endpoint."""
