"""Cloud Billing export files, read as they come from Google: every line kept, classified, in dollars when it can be.

Two layouts, told apart by their header:

- **BigQuery's standard usage cost export** (`gcp_billing_export_v1_*`) flattened to CSV by a
  query, with dotted or underscore column names (`sku.description` or `sku_description`):
  `service.description`, `sku.id`, `sku.description`, `project.id`, `usage_start_time`
  (UTC, hourly lines), `usage.amount`, `usage.unit`, `cost` (gross), `currency`,
  `currency_conversion_rate` (units of `currency` per USD), `credits` (BigQuery's JSON array)
  or `credits_amount`. A line's day is the UTC day of `usage_start_time`.
- **The console's Reports download**: `Usage start date` or `Date`, `Project ID`, `Service
  description`, `SKU description`, `Usage amount`, amounts in a column whose header names the
  currency (`Cost ($)`, `Unrounded subtotal (€)`, ...). The console dates usage in Pacific
  time, so a line's day is a Pacific day. Its subtotal is net of credits: the credit columns
  (savings, discounts, promotions) are added back to give the gross cost.

Nothing aborts a file: every line comes back with its SKU's class (`skus.py`). A cost in a
currency that cannot be converted (no `currency_conversion_rate`, no rate in `costs.toml`)
keeps `cost_usd` None and says why in `problem`: it is never read as 0. Pure: no Dagster.
"""

import csv
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo

from cost_pipeline.money.pricing import MONEY_PLACES
from cost_pipeline.money.skus import (
    Sku,
    classify,
)

UTC, PACIFIC = "UTC", "America/Los_Angeles"
BIGQUERY, CONSOLE = "bigquery", "console"
_CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR", "r$": "BRL", "a$": "AUD", "c$": "CAD"}
_HEADER_CURRENCY = re.compile(r"\s*\(([^)]*)\)\s*$")
_CONSOLE_CREDITS = (
    "negotiated_savings",
    "savings_programs",
    "other_savings",
    "discounts",
    "promotions_and_others",
    "promotions",
    "credits",
)
"""Console columns of credits and savings (negative amounts): what the subtotal has already taken off."""


@dataclass(frozen=True)
class ExportLine:
    """One line of an export, as Google wrote it, with its class and its gross cost in dollars."""

    file: str
    row: int
    """The line's number in its file (the header is line 1)."""
    layout: str
    day: date
    zone: str
    """The time zone `day` is in: UTC for BigQuery lines, Pacific for console lines."""
    service: str
    sku_id: str
    sku_description: str
    project: str
    amount: Decimal
    unit: str
    cost: Decimal | None
    """Gross, before credits, in `currency`; None when the line has none (never read as 0)."""
    credits: Decimal
    """Credits applied (free tier, promotions, savings), in `currency`; negative or 0."""
    currency: str
    cost_usd: Decimal | None
    credits_usd: Decimal | None
    sku: Sku
    problem: str | None = None
    """Why `cost_usd` is None (a currency without a rate)."""
    labels: dict[str, str] | None = None
    """The request labels Cloud Billing carried into the line (BigQuery export); None when the file has no labels."""

    @property
    def tokens(self) -> int:
        return int(self.amount)


def read_export(
    path: Path, sku_overrides: dict[str, str] | None = None, currency_rates: dict[str, Decimal] | None = None
) -> list[ExportLine]:
    """Every line of one export file, classified; `currency_rates` (units per USD) convert what the file cannot.

    Raises ValueError naming the file when it is neither layout (no SKU description column).
    """
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    # The console's download can put a summary above the header; the header is the first line naming the SKU.
    start = next((i for i, line in enumerate(lines) if "sku" in line.lower() and "description" in line.lower()), None)
    if start is None:
        raise ValueError(
            f"{path} is not a Cloud Billing export: no SKU description column (expected BigQuery's "
            "sku.description / sku_description or the console's 'SKU description')"
        )
    reader = csv.reader(lines[start:])
    header = next(reader)
    columns = [_column(name) for name in header]
    layout = BIGQUERY if "usage_start_time" in columns else CONSOLE
    read = _bigquery_line if layout == BIGQUERY else _console_line
    rates = {code.upper(): Decimal(str(rate)) for code, rate in (currency_rates or {}).items()}
    found = []
    for number, values in enumerate(reader, start=start + 2):
        if not any(value.strip() for value in values):
            continue
        row = {name: value.strip() for name, value in zip(columns, values)}
        if not row.get("service_description") and not row.get("sku_description"):
            continue  # the console's subtotal and total lines
        found.append(read(path.name, number, row, header, sku_overrides, rates))
    return found


def _column(name: str) -> str:
    """A header as one key: lower case, dots and spaces as underscores (`sku.description` = `sku_description`)."""
    return re.sub(r"[.\s]+", "_", name.strip().lower())


def _bigquery_line(file: str, number: int, row: dict, header: list[str], overrides, rates) -> ExportLine:
    currency = (row.get("currency") or "USD").upper()
    cost = _decimal(row["cost"], file, number, "cost") if row.get("cost") else None
    credits = (
        _decimal(row["credits_amount"], file, number, "credits_amount")
        if row.get("credits_amount")
        else _credits(row.get("credits", ""), file, number)
    )
    rate, problem = _rate(currency, row.get("currency_conversion_rate"), rates, file, number)
    if cost is None:
        problem = f"{file} line {number}: no cost"
    start = _utc(row["usage_start_time"], file, number)
    return _line(file, number, BIGQUERY, start.date(), UTC, row, cost, credits, currency, rate, problem, overrides)


def _console_line(file: str, number: int, row: dict, header: list[str], overrides, rates) -> ExportLine:
    amounts: dict[str, tuple[str, str]] = {}  # column name without its currency -> (currency, value)
    for name in header:
        found = _HEADER_CURRENCY.search(name)
        if found:
            key = _column(name[: found.start()])
            amounts[key] = (_currency_code(found.group(1)), row.get(_column(name), ""))
    currencies = {currency for currency, _ in amounts.values()}
    if len(currencies) != 1:
        raise ValueError(
            f"{file}: the console download's amount columns must name one currency, as 'Cost ($)' does; "
            f"found {sorted(currencies) or 'none'}"
        )
    (currency,) = currencies
    credits = sum(
        (
            _decimal(value, file, number, key)
            for key, (_, value) in amounts.items()
            if key in _CONSOLE_CREDITS and value
        ),
        Decimal(0),
    )
    if amounts.get("unrounded_cost", ("", ""))[1]:  # the cost table: gross, unrounded
        cost = _decimal(amounts["unrounded_cost"][1], file, number, "Unrounded cost")
    elif amounts.get("unrounded_subtotal", ("", ""))[1]:  # Reports: net of credits, which are added back
        cost = _decimal(amounts["unrounded_subtotal"][1], file, number, "Unrounded subtotal") - credits
    else:
        gross = next((key for key in ("cost", "list_cost") if amounts.get(key, ("", ""))[1]), None)
        if gross is None:
            raise ValueError(
                f"{file}: no cost column (expected 'Unrounded cost', 'Unrounded subtotal' or 'Cost', "
                "each with its currency, as in 'Cost ($)')"
            )
        cost = _decimal(amounts[gross][1], file, number, gross)
    rate, problem = _rate(currency, None, rates, file, number)
    day_text = row.get("usage_start_date") or row.get("date") or ""
    day = _pacific_day(day_text, file, number)
    return _line(file, number, CONSOLE, day, PACIFIC, row, cost, credits, currency, rate, problem, overrides)


def _line(
    file: str,
    number: int,
    layout: str,
    day: date,
    zone: str,
    row: dict,
    cost: Decimal | None,
    credits: Decimal,
    currency: str,
    rate: Decimal | None,
    problem: str | None,
    overrides: dict[str, str] | None,
) -> ExportLine:
    """The line of either layout once its day, cost and currency are read (their columns share their names).

    Twelve parameters: each is one field the layouts read differently, passed as read.
    """
    service, sku = row.get("service_description", ""), row.get("sku_description", "")
    return ExportLine(
        file,
        number,
        layout,
        day,
        zone,
        service,
        row.get("sku_id", ""),
        sku,
        row.get("project_id", ""),
        _decimal(row.get("usage_amount"), file, number, "usage amount"),
        row.get("usage_unit", ""),
        cost,
        credits,
        currency,
        _usd(cost, rate),
        _usd(credits, rate),
        classify(service, sku, overrides),
        problem,
        _labels(row.get("labels"), file, number),
    )


def _labels(text: str | None, file: str, number: int) -> dict[str, str] | None:
    """BigQuery's `labels` (a JSON array of {key, value}) as a dict; None when the column is absent."""
    if text is None:
        return None
    if not text.strip():
        return {}
    try:
        return {str(item["key"]): str(item.get("value", "")) for item in json.loads(text)}
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{file} line {number}: labels are not BigQuery's [{{key, value}}] JSON: {text[:80]!r}")


def _currency_code(marker: str) -> str:
    marker = marker.strip()
    return _CURRENCY_SYMBOLS.get(marker.lower(), marker.upper())


def _rate(
    currency: str, in_file: str | None, configured: dict[str, Decimal], file: str, number: int
) -> tuple[Decimal | None, str | None]:
    """Units of `currency` per USD: 1 for USD, else the line's own rate, else `costs.toml`'s; None says why."""
    if currency == "USD":
        return Decimal(1), None
    if in_file:
        rate = _decimal(in_file, file, number, "currency_conversion_rate")
        if rate > 0:
            return rate, None
    if currency in configured:
        return configured[currency], None
    return None, (
        f"{file} line {number}: cost in {currency} with no currency_conversion_rate: set "
        f'[billing.currency_rates] {currency} = "<{currency} per USD>" in costs.toml to compare it'
    )


def _usd(amount: Decimal | None, rate: Decimal | None) -> Decimal | None:
    return None if rate is None or amount is None else (amount / rate).quantize(MONEY_PLACES)


def _credits(text: str, file: str, number: int) -> Decimal:
    """The sum of BigQuery's `credits` array (`[{"name": ..., "amount": -0.5, ...}]`); empty is no credit."""
    if not text or text in ("[]", "null"):
        return Decimal(0)
    try:
        credits = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError:
        raise ValueError(f"{file} line {number}: credits is not BigQuery's JSON array: {text[:80]!r}") from None
    return sum((Decimal(str(credit.get("amount", 0))) for credit in credits), Decimal(0))


def _decimal(text: str | None, file: str, number: int, column: str) -> Decimal:
    cleaned = re.sub(r"[^\d.\-eE+]", "", (text or "").replace("\u2212", "-"))
    try:
        return Decimal(cleaned or "0") if text not in (None, "") else Decimal(0)
    except InvalidOperation:
        raise ValueError(f"{file} line {number}: {column} {text!r} is not a number") from None


def _utc(text: str, file: str, number: int) -> datetime:
    text = text.strip()
    for pattern in ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text.replace(" UTC", "+00:00").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{file} line {number}: usage_start_time {text!r} is not a time") from None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _pacific_day(text: str, file: str, number: int) -> date:
    """The console's date as written (already a Pacific day); a time with a zone is turned into Pacific time."""
    try:
        if len(text) <= 10:
            return date.fromisoformat(text)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{file} line {number}: usage date {text!r} is not a day") from None
    return parsed.astimezone(ZoneInfo(PACIFIC)).date() if parsed.tzinfo else parsed.date()


def day_bounds(day: date, zone: str) -> tuple[datetime, datetime]:
    """The UTC instants a day in `zone` starts and ends: how the ledger is cut to match a line's day."""
    start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone))
    end = datetime.fromordinal(day.toordinal() + 1).replace(tzinfo=ZoneInfo(zone))
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)
