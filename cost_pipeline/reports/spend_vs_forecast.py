"""Each day's spend against its forecast, as `run` and `backfill` end: did the money land where it was expected?

The spend is the ledger's (every billed attempt of the day's run), the forecast the one
printed before anything was sent. Money stays `Decimal`; an attempt of unknown cost is
counted and named, never read as 0.
"""

from dataclasses import dataclass
from decimal import Decimal

from cost_pipeline.money.forecast import Forecast
from cost_pipeline.money.ledger import RunSpend


@dataclass(frozen=True)
class DayOutcome:
    """How one day's run ended and what it was billed (None: its run recorded no attempt)."""

    day: str
    status: str
    spend: RunSpend | None


def render(outcomes: list[DayOutcome], forecast: Forecast | None) -> str:
    """A table: day, status, forecast and its 95% range, spend, and spend against forecast; then a TOTAL row."""
    by_day = {day.day.isoformat(): day for day in forecast.days} if forecast else {}
    lines = [
        f"{'day':<12} {'status':<8} {'forecast':>12} {'range (95%)':>23} {'spend':>12}  vs forecast",
        "-" * 86,
    ]
    forecast_total = spend_total = Decimal(0)
    unknown = 0
    for outcome in outcomes:
        expected = by_day.get(outcome.day)
        spend = outcome.spend.billed_usd if outcome.spend else Decimal(0)
        unknown += outcome.spend.unknown if outcome.spend else 0
        spend_total += spend
        if expected is None or not expected.landed:
            shown, span = ("never landed" if expected else "no forecast"), ""
            verdict = ""
        else:
            low, high = expected.bounds()
            forecast_total += expected.forecast_usd
            shown, span = _usd(expected.forecast_usd), f"{_usd(low)} to {_usd(high)}"
            verdict = f"{_change(spend, expected.forecast_usd)}, {'inside' if low <= spend <= high else 'OUTSIDE'}"
        lines.append(f"{outcome.day:<12} {outcome.status:<8} {shown:>12} {span:>23} {_usd(spend):>12}  {verdict}")
    lines.append("-" * 86)
    total_range = ""
    if forecast is not None and forecast_total:
        low, high = forecast.total().bounds()
        total_range = f"{_usd(low)} to {_usd(high)}"
    lines.append(
        f"{'TOTAL':<12} {'':<8} {_usd(forecast_total):>12} {total_range:>23} {_usd(spend_total):>12}  "
        f"{_change(spend_total, forecast_total) if forecast_total else ''}"
    )
    if unknown:
        lines.append(f"The spend leaves out {unknown} attempt(s) of unknown cost (see llm_attempts.price_status).")
    return "\n".join(lines)


def _usd(value: Decimal) -> str:
    return f"${value:,.6f}"


def _change(spend: Decimal, forecast: Decimal) -> str:
    return f"{(spend - forecast) / forecast:+.1%}" if forecast else "n/a"
