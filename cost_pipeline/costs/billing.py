"""Billing exports in Google Cloud Billing's layout: written by the local server, read for reconciliation.

Layout: the columns of Cloud Billing's standard usage cost export (BigQuery
`gcp_billing_export_v1_*`) flattened to CSV, as `bq extract` or a query download gives
them: `billing_account_id`, `service.description`, `sku.id`, `sku.description`,
`usage_start_time`, `usage_end_time`, `project.id`, `cost`, `currency`, `usage.amount`,
`usage.unit`. One line per UTC day x model x token kind; Gemini API usage is in tokens
(`usage.unit` = `count`), and SKU descriptions follow Google's own wording, e.g.
"Generate content input token count gemini 2.5 flash lite short input text". The
console's Reports download (`Date`, `SKU description`, `Usage amount`, `Usage unit`,
`Unrounded subtotal ($)`) is read too; note that the console dates usage in Pacific
time, while the BigQuery export's timestamps are UTC.

A SKU description maps to (model, kind) by the rule in `parse_sku`; a person whose
invoice words a SKU differently maps it in `costs.toml` under `[billing.skus]`:
`"<SKU description>" = "<model>/<kind>"` with kind `input`, `cached_input` or `output`, and
`/batch` after it for a Batch API SKU (one whose description says "batch" needs no override
for that). Standard and batch usage are reconciled as separate lines, as they are priced.
Pure: no Dagster; prices through the project's price book (genai-prices).
"""

import csv
import io
import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from cost_pipeline.costs.pricing import BATCH, STANDARD, PriceBook, TokenCounts

BILLED_USAGE_FIELDS = ("promptTokenCount", "cachedContentTokenCount", "candidatesTokenCount", "thoughtsTokenCount",
                       "toolUsePromptTokenCount")
KINDS = ("input", "cached_input", "output")
"""Token kinds as the invoice splits them: uncached prompt (tool-use prompt included), cached prompt, output (thinking included)."""
SERVICE = "Gemini API"
SERVICE_ID = "AEFD-7695-64FA"
HEADER = ["billing_account_id", "service.description", "service.id", "sku.id", "sku.description", "usage_start_time",
          "usage_end_time", "project.id", "cost", "currency", "usage.amount", "usage.unit"]
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
_SKU_TEXT = {"input": "Generate content input token count {name} short input text",
             "cached_input": "Generate content cached input token count {name} input short text",
             "output": "Generate content output token count {name} short output text"}
_BATCH_WORD = re.compile(r"\bbatch\b", re.IGNORECASE)
_MODEL_IN_SKU = re.compile(r"gemini[ -](\d+(?:\.\d+)?)[ -](pro|flash)(?:[ -](lite))?", re.IGNORECASE)


class UnknownSku(ValueError):
    """A Gemini SKU description we cannot map to a model and token kind."""


def sku_description(model: str, kind: str, processing: str = STANDARD) -> str:
    """Google's wording for a model's token SKU: `gemini-2.5-flash-lite` -> 'gemini 2.5 flash lite' (batch SKUs say so)."""
    text = _SKU_TEXT[kind].format(name=model.replace("-", " "))
    return text if processing == STANDARD else f"Batch {text[0].lower()}{text[1:]}"


def parse_sku(description: str, overrides: dict[str, str] | None = None) -> tuple[str, str]:
    """(model, kind) of a Gemini API SKU description; `overrides` maps exact descriptions to 'model/kind[/batch]'."""
    if overrides and description in overrides:
        return _override(description, overrides[description])[:2]
    text = description.lower()
    found = _MODEL_IN_SKU.search(text)
    if not found or "token count" not in text:
        raise UnknownSku(f"cannot map SKU {description!r} to a model and token kind; map it under [billing.skus] in costs.toml")
    version, tier, lite = found.groups()
    model = f"gemini-{version}-{tier.lower()}" + ("-lite" if lite else "")
    kind = "cached_input" if "cached input" in text else "output" if "output token" in text else "input"
    return model, kind


def sku_processing(description: str, overrides: dict[str, str] | None = None) -> str:
    """`batch` for a Batch API SKU (the word batch in its description, or an override ending in /batch), else standard."""
    if overrides and description in overrides:
        return _override(description, overrides[description])[2]
    return BATCH if _BATCH_WORD.search(description) else STANDARD


def _override(description: str, target: str) -> tuple[str, str, str]:
    rest, _, last = target.rpartition("/")
    processing = STANDARD
    if last in (STANDARD, BATCH):  # '<model>/<kind>/batch' (a model name may itself hold '/')
        processing, (rest, _, last) = last, rest.rpartition("/")
    if last not in KINDS or not rest:
        raise UnknownSku(f"override for SKU {description!r} must be '<model>/<kind>' or '<model>/<kind>/batch' "
                         f"with kind in {KINDS}")
    return rest, last, processing


def kind_tokens(prompt: int, cached: int, candidates: int, thoughts: int, tool_prompt: int) -> dict[str, int]:
    """One response's tokens by invoice kind."""
    return {"input": prompt - cached + tool_prompt, "cached_input": cached, "output": candidates + thoughts}


LOCAL_PROJECT = "local-gemini-server"
"""The project the local server bills: its lines are compared with attempts it answered, never with Google's."""
LOCAL_SOURCE, PROVIDER_SOURCE = "local-server", "provider"


def billing_export_csv(records: list[dict], book: PriceBook | None = None, account: str = "LOCAL-000000-000000",
                       project: str = LOCAL_PROJECT) -> str:
    """The provider's billing records as Cloud Billing export lines: one per UTC day x model x kind.

    Each record is one billed response (`model` as served, `at` a Unix time, the usage
    counts of `BILLED_USAGE_FIELDS`, `processing` standard or batch). Costs are priced per
    response with the list prices (batch ones for batch responses) and summed, as the
    provider's tiering is per request; batch usage has its own SKU lines.
    """
    book = book or PriceBook()
    lines: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0)])
    for record in records:
        at = datetime.fromtimestamp(record["at"], timezone.utc)
        counts = [int(record.get(name) or 0) for name in BILLED_USAGE_FIELDS]
        prompt, cached, candidates, thoughts, tool_prompt = counts
        processing = record.get("processing") or STANDARD
        priced = book.cost(record["model"], TokenCounts(prompt, cached, candidates, thoughts, tool_prompt), at,
                           processing=processing)
        costs = {"input": priced.input_cost, "cached_input": priced.cached_input_cost, "output": priced.output_cost}
        for kind, tokens in kind_tokens(*counts).items():
            line = lines[(at.date(), record["model"], kind, processing)]
            line[0] += tokens
            line[1] += costs[kind] or Decimal(0)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for (day, model, kind, processing), (tokens, cost) in sorted(lines.items()):
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        sku_id = f"LOCAL-{model}-{kind}" + ("" if processing == STANDARD else f"-{processing}")
        writer.writerow([account, SERVICE, SERVICE_ID, sku_id, sku_description(model, kind, processing),
                         start.strftime(TIME_FORMAT), (start + timedelta(days=1)).strftime(TIME_FORMAT), project,
                         str(cost), "USD", tokens, "count"])
    return out.getvalue()


def read_export(path: Path, sku_overrides: dict[str, str] | None = None) -> list[dict]:
    """Gemini lines of one export file as {source, day, model, kind, processing, sku, tokens, cost_usd}; other
    services are skipped.

    `source` is `local-server` for the local server's own invoice (its project), else `provider`.
    """
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    # The console's Cost table download puts invoice lines above the header; find the header.
    start = next((i for i, line in enumerate(lines) if "sku.description" in line.lower() or "sku description" in line.lower()), 0)
    rows = []
    for raw in csv.DictReader(lines[start:]):
        row = {key.strip().lower(): (value or "").strip() for key, value in raw.items() if key}
        service = row.get("service.description", row.get("service description", ""))
        sku = row.get("sku.description", row.get("sku description", ""))
        if service not in {SERVICE, "Generative Language API"} or "token" not in sku.lower():
            continue
        model, kind = parse_sku(sku, sku_overrides)
        when = row.get("usage_start_time") or row.get("date") or row.get("usage start date")
        cost = row.get("cost") or row.get("unrounded subtotal ($)") or row.get("unrounded cost ($)") or "0"
        project = row.get("project.id", row.get("project id", ""))
        rows.append({"source": LOCAL_SOURCE if project == LOCAL_PROJECT else PROVIDER_SOURCE,
                     "day": _day(when), "model": model, "kind": kind,
                     "processing": sku_processing(sku, sku_overrides), "sku": sku,
                     "tokens": int(Decimal(row.get("usage.amount", row.get("usage amount", "0")).replace(",", ""))),
                     "cost_usd": Decimal(cost.replace(",", "").replace("$", ""))})
    return rows


def _day(text: str):
    for pattern in (TIME_FORMAT, "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    return datetime.fromisoformat(text).astimezone(timezone.utc).date()


def billing_model(name: str) -> str:
    """The model name an invoice line uses for a served model: 'gemini-2.5-flash-lite-preview-09-2025' -> 'gemini-2.5-flash-lite'."""
    found = _MODEL_IN_SKU.search(name.replace("-", " "))
    if not found:
        return name
    version, tier, lite = found.groups()
    return f"gemini-{version}-{tier.lower()}" + ("-lite" if lite else "")


def compare(invoice: list[dict], ledger: list[dict], token_tolerance: int, usd_tolerance: Decimal) -> list[dict]:
    """Invoice lines against ledger lines, keyed by (source, day, model, kind, processing): one row per key with both
    sides and the gaps.

    Each input row has source, day, model, kind, tokens and cost_usd; models are compared by
    `billing_model`. A key on one side only has zeros on the other. `within_tolerance` is
    false when the token gap or the dollar gap is larger than allowed.
    """
    sides: dict[tuple, dict] = defaultdict(lambda: {"invoice_tokens": 0, "ledger_tokens": 0,
                                                     "invoice_usd": Decimal(0), "ledger_usd": Decimal(0)})
    for side, rows in (("invoice", invoice), ("ledger", ledger)):
        for row in rows:
            line = sides[(row["source"], row["day"], billing_model(row["model"]), row["kind"],
                          row.get("processing") or STANDARD)]
            line[f"{side}_tokens"] += int(row["tokens"])
            line[f"{side}_usd"] += row["cost_usd"] or Decimal(0)
    result = []
    for (source, day, model, kind, processing), line in sorted(sides.items()):
        token_gap, usd_gap = line["invoice_tokens"] - line["ledger_tokens"], line["invoice_usd"] - line["ledger_usd"]
        result.append({"source": source, "billing_day": day, "model": model, "kind": kind, "processing": processing,
                       **line, "token_gap": token_gap, "usd_gap": usd_gap,
                       "within_tolerance": abs(token_gap) <= token_tolerance and abs(usd_gap) <= usd_tolerance})
    return result
