"""Resources for the landing folder and cost settings, so their locations and limits are run config."""

import tomllib
from decimal import Decimal
from pathlib import Path

import dagster as dg
from pydantic import Field

from cost_pipeline.ingest.landing import (
    DEFAULT_MAX_TEXT_CHARS,
    LandingFolderMissing,
    LandingReader,
    landing_folder,
)
from cost_pipeline.money.budgets import Limits
from cost_pipeline.money.invoice_match import Tolerance
from cost_pipeline.money.pricing import PriceBook, parse_overrides


class LandingResource(dg.ConfigurableResource):
    """Where transcripts land (`<root>/<YYYY-MM-DD>/*.jsonl`) and how strictly they are read."""

    root: str = Field(description="Folder holding one sub-folder per day.")
    max_text_chars: int = Field(default=DEFAULT_MAX_TEXT_CHARS, description="Turns with longer text are quarantined.")

    def reader(self, day: str) -> LandingReader:
        """The day as a stream of turns and quarantined lines, so a day of any size reads in flat memory.

        Raises `LandingFolderMissing` (one sentence: which day, which folder) when the day
        has no `*.jsonl` file yet.
        """
        missing = self.missing(day)
        if missing:
            raise LandingFolderMissing(missing)
        return LandingReader(landing_folder(self.root, day), self.max_text_chars)

    def missing(self, day: str) -> str | None:
        """Why `day` has nothing to ingest yet (no folder, or no `*.jsonl` in it), or None when it has."""
        folder = landing_folder(self.root, day)
        if folder.is_dir() and any(folder.glob("*.jsonl")):
            return None
        return (
            f"No landing files for {day}: expected {folder.resolve()}/*.jsonl (COST_PIPELINE_LANDING sets "
            "where transcripts land)"
        )


class BillingExports(dg.ConfigurableResource):
    """Where Cloud Billing exports land: any `*.csv` in the folder, in a layout `money/billing_export.py` reads."""

    folder: str = Field(description="Folder of billing export CSV files (COST_PIPELINE_BILLING).")

    def files(self) -> list[Path]:
        folder = Path(self.folder)
        return sorted(folder.glob("*.csv")) if folder.is_dir() else []


class CostSettings(dg.ConfigurableResource):
    """Price overrides, per-evaluation budgets and alert thresholds, from a small TOML file."""

    config_file: str | None = Field(
        default=None, description='TOML with [prices."<model>"] and [budgets]; none: library prices, no budgets.'
    )
    budget_warn_share: float = Field(
        default=0.8, description="Warn when an evaluation has used this share of its budget."
    )
    estimated_share_warn: float = Field(
        default=0.05, description="Warn when more calls than this share have estimated usage."
    )
    quarantine_share_warn: float = Field(
        default=0.05, description="Warn when more landed lines than this share are quarantined."
    )
    failed_turn_share_warn: float = Field(
        default=0.01,
        description="Warn when more turns than this share failed cleaning "
        "(the stage itself fails above max_failure_share).",
    )

    def _table(self) -> dict:
        if not self.config_file:
            return {}
        path = Path(self.config_file)
        if not path.is_file():
            raise FileNotFoundError(f"cost settings file {path.resolve()} does not exist (COST_PIPELINE_COSTS)")
        with path.open("rb") as handle:
            return tomllib.load(handle)

    def price_book(self) -> PriceBook:
        return PriceBook(
            parse_overrides(self._table().get("prices", {})), override_source=f"override ({self.config_file})"
        )

    def sku_overrides(self) -> dict[str, str]:
        """`[billing.skus]`: exact SKU description -> '<model>/<kind>[/<modality>][/<tier>]', other_gemini or
        not_gemini."""
        return dict(self._billing().get("skus", {}))

    def billing_projects(self) -> list[str]:
        """`[billing] projects`: the projects whose Gemini token lines are this pipeline's (the local server's is)."""
        return [str(project) for project in self._billing().get("projects", [])]

    def currency_rates(self) -> dict[str, Decimal]:
        """`[billing.currency_rates]`: units per USD for exports that carry no rate (the console's download)."""
        return {code: Decimal(str(rate)) for code, rate in self._billing().get("currency_rates", {}).items()}

    def billing_tolerance(self) -> Tolerance:
        """`[billing]` token_tolerance (0), usd_tolerance ($0.000001) and usd_relative_tolerance (0.0001) per line."""
        billing, default = self._billing(), Tolerance()
        return Tolerance(
            int(billing.get("token_tolerance", default.tokens)),
            Decimal(str(billing.get("usd_tolerance", default.usd_absolute))),
            Decimal(str(billing.get("usd_relative_tolerance", default.usd_relative))),
        )

    def _billing(self) -> dict:
        return self._table().get("billing", {})

    def limits(self) -> Limits:
        """`[limits]`: hard spend limits per run, per day and per evaluation (month, all time); see money/budgets.py."""
        return Limits.from_table(self._table().get("limits", {}))

    def labels(self) -> dict[str, str]:
        """`[labels]`: labels every Vertex AI request carries besides the pipeline's own; checked against Google's
        rules, never rewritten (raises ValueError naming each problem)."""
        from cost_pipeline.gemini.labels import check_labels

        labels = {str(key): str(value) for key, value in self._table().get("labels", {}).items()}
        if problems := check_labels(labels):
            raise ValueError(f"[labels] in {self.config_file}: " + "; ".join(problems))
        return labels

    def budgets(self) -> dict[str, Decimal]:
        """Budget per evaluation in USD; the key `default` covers evaluations not listed."""
        return {name: Decimal(str(value)) for name, value in self._table().get("budgets", {}).items()}
