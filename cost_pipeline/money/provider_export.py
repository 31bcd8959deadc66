"""The bill a provider writes for the answers it served, as BigQuery's Cloud Billing export flattened to CSV.

The shipped local server bills its answers through this module, so the reconciliation is
tested against an export in Google's own shape and wording: the Gemini API's (service
"Gemini API", no location) and Vertex AI's (service "Vertex AI", a location, the request's
labels, and a SKU per traffic tier). Each is one line per UTC hour, place and SKU; a line's
cost is its answers' list prices split as the invoice splits them (`invoice_split`), and a line
with any unpriced part has no cost, which the reader refuses to read as 0. Pure: no Dagster.
"""

import csv
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import genai_prices
from genai_prices.types import calc_unit_price

from cost_pipeline.gemini.traffic import FLEX, ON_DEMAND, PRIORITY
from cost_pipeline.gemini.usage import REPORTED, Usage, metadata_from_dict, usage_from_metadata
from cost_pipeline.money.pricing import (
    MONEY_PLACES,
    PER_MILLION,
    STANDARD,
    PriceBook,
    invoice_split,
    library_usage,
)
from cost_pipeline.money.skus import (
    GEMINI_API,
    GEMINI_API_SERVICE_ID,
    LONG,
    LONG_CONTEXT_TOKENS,
    SHORT,
    VERTEX_AI,
    describe,
    invoice_model,
)

LOCAL_PROJECT = "local-gemini-server"
"""The project the shipped local server bills on the Gemini API."""
GEMINI_API_SURFACE, VERTEX_SURFACE = "gemini-api", "vertex"
"""A billing record's `surface`: which API answered."""

BIGQUERY_HEADER = [
    "billing_account_id",
    "service.id",
    "service.description",
    "sku.id",
    "sku.description",
    "usage_start_time",
    "usage_end_time",
    "project.id",
    "labels",
    "cost",
    "currency",
    "currency_conversion_rate",
    "usage.amount",
    "usage.unit",
    "credits",
]
_AFTER_PROJECT = BIGQUERY_HEADER.index("project.id") + 1
VERTEX_HEADER = [*BIGQUERY_HEADER[:_AFTER_PROJECT], "location.location", *BIGQUERY_HEADER[_AFTER_PROJECT:]]
"""BigQuery's export columns, with the location Vertex AI lines carry."""
_TIME = "%Y-%m-%d %H:%M:%S UTC"

VERTEX_AI_SERVICE_ID = "C7E2-9256-1C43"
VERTEX_MODEL_NAMES = {
    "gemini-2.5-flash-lite": "Gemini 2.5 Flash Lite",
    "gemini-2.5-flash": "Gemini 2.5 Flash GA",
    "gemini-2.5-pro": "Gemini 2.5 Pro",
}
"""Models as Vertex AI SKUs name them, where the name is not the model id in words (verbatim SKUs: see
`vertex_sku`)."""
VERTEX_SKU_IDS = {
    "Gemini 2.5 Flash GA Text Input - Predictions": "FDAB-647C-5A22",
    " Gemini 2.5 Flash GA Input Text Caching": "A1C1-77CC-6FAE",
    "Gemini 2.5 Pro Text Input - Predictions": "A121-E2B5-1418",
    "Gemini 2.5 Pro Text Output - Predictions": "5DA2-3F77-1CA5",
    " Gemini 2.5 Pro Input Text Caching": "E941-1B12-88B9",
    "Gemini 2.5 Flash Lite Text Input - Predictions": "F91E-007E-3BA1",
    "Gemini 2.5 Flash Lite Text Output - Predictions": "2D6E-6AC5-B1FD",
    " Gemini 2.5 Flash Lite Input Text Caching": "95C5-4D3B-D378",
}
"""Real Vertex AI SKU ids: a contract price list's breakdown naming id and description (stored public file,
search id 25875549319), and for Flash Lite two public SKU tables (ids 33180387021, 68927314387)."""
VERTEX_TIER_WORDS = {ON_DEMAND: "", FLEX: " Flex", PRIORITY: " Priority"}
"""The words a tier adds to a SKU; provisioned throughput has no per-token SKU."""

Costs = tuple[Decimal | None, Decimal | None, Decimal | None]
"""An answer's (input, cached input, output) list cost; None where unpriced."""


@dataclass(frozen=True)
class BillingPlace:
    """Who was billed, and for what service, on a line of a BigQuery-style export the provider writes."""

    account: str
    service_id: str
    service: str
    project: str
    location: str | None = None
    """Vertex AI lines carry one; the Gemini API's do not (their header has no location column)."""
    labels: str = "[]"
    """The request labels, as BigQuery's JSON array of {key, value}."""

    def row(self, hour: datetime, sku: tuple[str, str], tokens: int, cost: Decimal | None) -> list:
        """The cells of one hour's line of `sku` (id, description): in USD, `cost` empty when unpriced (never 0)."""
        where = [self.project] if self.location is None else [self.project, self.location]
        started, ended = hour.strftime(_TIME), (hour + timedelta(hours=1)).strftime(_TIME)
        amount = "" if cost is None else format(cost, "f")
        usd = ["USD", "1.0"]  # currency and conversion rate
        return [
            self.account,
            self.service_id,
            self.service,
            *sku,
            started,
            ended,
            *where,
            self.labels,
            amount,
            *usd,
            tokens,
            "count",
            "[]",  # credits
        ]


@dataclass(frozen=True)
class BilledPart:
    """One kind and modality of one answer's tokens, with its share of the list cost and its UTC hour."""

    record: dict
    hour: datetime
    context: str
    """SHORT or LONG: whether the prompt was billed on the long-context SKUs."""
    kind: str
    modality: str
    tokens: int
    cost: Decimal | None


class HourlyLines:
    """Billed parts summed per line key (hour, place, SKU ...): tokens added; a cost that stays None once any part
    of the line is unpriced, since a line's cost is only known when every part of it is."""

    def __init__(self) -> None:
        self._lines: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0)])

    def add(self, key: tuple, part: BilledPart) -> None:
        line = self._lines[key]
        line[0] += part.tokens
        line[1] = None if line[1] is None or part.cost is None else line[1] + part.cost

    def sorted(self) -> list[tuple[tuple, int, Decimal | None]]:
        return [(key, tokens, cost) for key, (tokens, cost) in sorted(self._lines.items())]


def billed_parts(
    records: list[dict], price: Callable[[dict, Usage, datetime, bool], tuple[Costs, dict]]
) -> Iterator[BilledPart]:
    """Each record's reported tokens split as the invoice splits them, priced by `price(record, usage, at, long)`,
    which gives the (input, cached, output) costs and the modality rates. A record without a token count (a cut-off
    body, an error) was not billed by the token and gives nothing."""
    for record in records:
        usage = usage_from_metadata(metadata_from_dict(record["usage"]))
        if usage is None or usage.source != REPORTED:
            continue
        at = datetime.fromtimestamp(record["at"], timezone.utc)
        long_context = usage.input_tokens + usage.tool_prompt_tokens > LONG_CONTEXT_TOKENS
        costs, rates = price(record, usage, at, long_context)
        hour = at.replace(minute=0, second=0, microsecond=0)
        context = LONG if long_context else SHORT
        for kind, modality, count, cost in invoice_split(lambda name, usage=usage: getattr(usage, name), costs, rates):
            yield BilledPart(record, hour, context, kind, modality, count, cost)


def provider_export_csv(
    records: list[dict],
    book: PriceBook | None = None,
    account: str = "LOCAL-000000-000000",
    project: str = LOCAL_PROJECT,
) -> str:
    """What the Gemini API billed for its answers: one line per UTC hour and SKU, in the Gemini API's SKU wording.

    Each record is one billed response: `model` as served, `at` (Unix time), `usage` (its
    `usageMetadata`), `processing` (standard or batch).
    """
    book = book or PriceBook()

    def price(record: dict, usage: Usage, at: datetime, long_context: bool) -> tuple[Costs, dict]:
        processing = record.get("processing") or STANDARD
        priced = book.cost(record["model"], usage, at, processing=processing)
        rates = book.modality_rates(record["model"], at, processing, long_context) or {}
        return (priced.input_cost, priced.cached_input_cost, priced.output_cost), rates

    lines = HourlyLines()
    for part in billed_parts(records, price):
        processing = part.record.get("processing") or STANDARD
        model = invoice_model(part.record["model"])
        lines.add((part.hour, model, part.kind, part.modality, processing, part.context), part)
    place = BillingPlace(account, GEMINI_API_SERVICE_ID, GEMINI_API, project)
    rows = []
    for (hour, model, kind, modality, processing, context), tokens, cost in lines.sorted():
        sku_id, description = describe(model, kind, modality, processing, context)
        rows.append(place.row(hour, (sku_id or _sku_id(description), description), tokens, cost))
    return _csv(BIGQUERY_HEADER, rows)


def vertex_export_csv(records: list[dict], book: PriceBook | None = None, account: str = "LOCAL-000000-000000") -> str:
    """What Vertex AI billed for the Vertex answers among `records`: one line per UTC hour, project, location, SKU
    and set of labels (the request's `labels`, as the export's JSON array of `{"key", "value"}`).

    On-demand, flex and priority answers go to their own SKUs (`vertex_sku`); answers served
    from provisioned throughput have no line, as that capacity is not billed by the token. A
    tier genai-prices has no price for leaves the cost empty, never the standard price, never 0.
    """
    book = book or PriceBook()
    vertex = [
        record
        for record in records
        if record["surface"] == VERTEX_SURFACE and record.get("traffic_type") in VERTEX_TIER_WORDS
    ]

    def price(record: dict, usage: Usage, at: datetime, long_context: bool) -> tuple[Costs, dict]:
        return _vertex_costs(book, record["model"], usage, at, record["traffic_type"], long_context)

    lines = HourlyLines()
    for part in billed_parts(vertex, price):
        record = part.record
        sku = vertex_sku(invoice_model(record["model"]), part.kind, part.modality, record["traffic_type"], part.context)
        labels = tuple(sorted(record["labels"].items()))
        lines.add((part.hour, record["project"], record["location"], labels, sku), part)
    rows = []
    for (hour, project, location, labels, sku), tokens, cost in lines.sorted():
        labelled = json.dumps([{"key": key, "value": value} for key, value in labels], separators=(",", ":"))
        place = BillingPlace(account, VERTEX_AI_SERVICE_ID, VERTEX_AI, project, location, labelled)
        rows.append(place.row(hour, (VERTEX_SKU_IDS.get(sku, ""), sku), tokens, cost))  # no SKU id made up
    return _csv(VERTEX_HEADER, rows)


def vertex_sku(model: str, kind: str, modality: str, traffic: str, context: str) -> str:
    """A Vertex AI Gemini token SKU's description, worded as Google's are.

    Verbatim Vertex SKUs this follows: "Gemini 2.5 Flash Lite Text Input - Predictions", "Gemini
    2.5 Flash GA Text Input - Predictions", " Gemini 2.5 Flash Lite Input Text Caching" (leading
    space and all), from a test copying a live export's `SELECT DISTINCT sku.description`
    (stored public file, search id 58001810404); "Gemini 3 Flash Text Input Flex - Predictions"
    (id 57579783011) and "Gemini 2.5 Pro Audio Output Priority - Predictions" (id 56617342108)
    for the tier words; "... Caching Flex" and "Gemini 2.0 Flash Text Input (Long) - Predictions"
    (id 67047272758, quoting cloud.google.com/skus/sku-groups/vertex-api-gemini-2-x-skus). Where
    "(Long)" and a tier word meet, their order is this function's choice.
    """
    name = VERTEX_MODEL_NAMES.get(model) or " ".join(word.capitalize() for word in model.split("-"))
    long = " (Long)" if context == LONG else ""
    tier = VERTEX_TIER_WORDS[traffic]
    if kind == "cached_input":
        return f" {name} Input {modality.capitalize()} Caching{long}{tier}"
    return f"{name} {modality.capitalize()} {kind.capitalize()}{long}{tier} - Predictions"


def _vertex_costs(
    book: PriceBook, model: str, usage: Usage, at: datetime, traffic: str, long_context: bool
) -> tuple[Costs, dict]:
    """(input, cached input, output) list cost of one answer at its traffic type, and its modality rates.

    On demand is the price book's standard price. Flex and priority are genai-prices'
    `service_tier` variants where the model has one in force; otherwise unpriced (None), since
    the library answers a tier it has no variant for with the standard price. Tier lines split
    only text at a known rate: another modality's share stays None.
    """
    if traffic == ON_DEMAND:
        priced = book.cost(model, usage, at)
        return (priced.input_cost, priced.cached_input_cost, priced.output_cost), (
            book.modality_rates(model, at, STANDARD, long_context) or {}
        )
    context = {"service_tier": traffic.removeprefix("ON_DEMAND_").lower()}
    try:
        calculation = genai_prices.calc_price(
            library_usage(usage), model, provider_id="google", genai_request_timestamp=at, price_context=context
        )
    except LookupError:
        return (None, None, None), {}
    if not any(
        variant.when == context and (variant.constraint is None or variant.constraint.active(at))
        for variant in calculation.model.price_variants or ()
    ):
        return (None, None, None), {}
    total_input = usage.input_tokens + usage.tool_prompt_tokens
    cached = calc_unit_price(calculation.model_price.cache_read_mtok, usage.cached_tokens, total_input, PER_MILLION)
    input_cost, output_cost = calculation.input_price - cached, calculation.output_price
    return (input_cost.quantize(MONEY_PLACES), cached.quantize(MONEY_PLACES), output_cost.quantize(MONEY_PLACES)), {}


def _sku_id(description: str) -> str:
    """A stable id in the SKU id's shape (`XXXX-XXXX-XXXX`) for a SKU whose real id the catalogue table lacks."""
    digest = hashlib.sha1(description.encode()).hexdigest()[:12].upper()
    return "-".join(digest[i : i + 4] for i in (0, 4, 8))


def _csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
