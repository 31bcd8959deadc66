"""One billing day of an export against the ledger: line by line where they can be compared, the rest accounted for.

Which lines are compared:
- only our projects' Gemini token lines: the projects named in `costs.toml` (`[billing]
  projects`), plus `local-gemini-server`, the project the shipped server bills. Without a
  setting, the one project with Gemini token lines in the export is ours; with several,
  nothing is compared and the result says why (the ledger cannot see which project a key
  bills);
- lines of other projects and services are counted by project and service (`not_ours`);
  our projects' other Gemini spend (cache storage, embeddings, ...) and token lines for a
  model, tier or modality the ledger never used that day (someone else's image generation
  in the same project) are reported with their cost (`other_spend`), never compared;
  unknown Gemini SKUs are reported by name and cost.

Grain: model (as the invoice names it) x kind x modality x tier x context, summed over
hourly lines and our projects. The ledger is cut to the same day in the line's zone (UTC
for BigQuery lines, Pacific for the console's) and split the same way; the part of a
kind's cost that is audio, image or video is its tokens at that modality's rate, text is
the rest of the ledger's own cost, so a mispriced modality shows on its kind's text line.
Tokens must match exactly by default; dollars within an absolute or relative tolerance,
as Google bills a line at its own unit price and rounding. Credits are shown beside the
gross cost, which is what is compared. Pure: no Dagster, no database.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

from cost_pipeline.gemini.labels import PIPELINE
from cost_pipeline.gemini.traffic import SERVED_AS
from cost_pipeline.money.billing_export import BIGQUERY, ExportLine
from cost_pipeline.money.pricing import STANDARD, PriceBook, Tier, invoice_split
from cost_pipeline.money.provider_export import LOCAL_PROJECT
from cost_pipeline.money.skus import (
    LONG,
    NOT_GEMINI,
    OTHER_GEMINI,
    SHORT,
    TOKENS,
    UNKNOWN_GEMINI,
    VERTEX_AI,
    invoice_model,
)

KEY = ("model", "kind", "modality", "tier", "context")


@dataclass(frozen=True)
class Tolerance:
    """How far an invoice line may be from the ledger and still match."""

    tokens: int = 0
    usd_absolute: Decimal = Decimal("0.000001")
    usd_relative: Decimal = Decimal("0.0001")
    """Of the invoice line's cost: Google bills a line at its own rounded unit price (a real line: 622,403 tokens
    billed $1.555990 against a list price of $1.5560075, 0.0011% apart)."""

    def allows(self, token_gap: int, usd_gap: Decimal | None, invoice_usd: Decimal | None) -> bool:
        if abs(token_gap) > self.tokens or usd_gap is None:
            return False
        return abs(usd_gap) <= max(self.usd_absolute, self.usd_relative * abs(invoice_usd or Decimal(0)))

    def describe(self) -> str:
        return f"{self.tokens} tokens and the larger of ${self.usd_absolute} or {self.usd_relative:%} of the line"


@dataclass
class DayMatch:
    """What one billing day's export lines and the ledger make of each other."""

    day: date
    zone: str
    lines: list[dict] = field(default_factory=list)
    """Compared lines: both sides, the gaps, whether they are within the tolerance."""
    other_spend: list[dict] = field(default_factory=list)
    not_ours: list[dict] = field(default_factory=list)
    unknown_skus: list[dict] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: str | None = None
    """Why nothing was compared (several projects and no setting); None when lines were compared."""


def day_lines(lines: list[ExportLine], day: date) -> tuple[list[ExportLine], list[str]]:
    """The lines of `day`: BigQuery's (UTC days) when there are any, else the console's (Pacific days); and warnings.

    The two layouts date the same usage differently, so one day is never read from both.
    """
    of_day = [line for line in lines if line.day == day]
    bigquery = [line for line in of_day if line.layout == BIGQUERY]
    if bigquery and len(bigquery) < len(of_day):
        files = sorted({line.file for line in of_day if line.layout != BIGQUERY})
        return bigquery, [
            f"{day}: the console download(s) {', '.join(files)} are not read for this day, as BigQuery "
            "export lines cover it (the console dates usage by Pacific day)"
        ]
    return of_day, []


def our_projects(lines: list[ExportLine], configured: list[str]) -> tuple[set[str] | None, str | None]:
    """The projects whose Gemini token lines are ours, or None and why when the export cannot tell.

    A console download has no project column (`""`): it is read as filtered to our projects in the console.
    """
    if configured:
        return {*configured, LOCAL_PROJECT, ""}, None
    with_tokens = sorted({line.project for line in lines if line.sku.category == TOKENS} - {LOCAL_PROJECT, ""})
    if len(with_tokens) > 1:
        return None, (
            f"the export has Gemini token lines of {len(with_tokens)} projects ({', '.join(with_tokens)}) "
            'and costs.toml names none of them: set [billing] projects = ["<project id>", ...] to the '
            "projects this pipeline's keys bill; nothing was compared"
        )
    return {*with_tokens, LOCAL_PROJECT, ""}, None


@dataclass
class _Billed:
    """The invoice's side of one compared line: its export lines summed."""

    tokens: int = 0
    usd: Decimal = Decimal(0)
    credits_usd: Decimal = Decimal(0)
    skus: set[str] = field(default_factory=set)
    currencies: set[str] = field(default_factory=set)
    problems: set[str] = field(default_factory=set)
    """Why a line's cost is unknown (its currency could not be converted): the whole line's cost is then."""

    def add(self, line: ExportLine) -> None:
        self.tokens += line.tokens
        self.skus.add(line.sku_description)
        self.currencies.add(line.currency)
        if line.cost_usd is None:
            self.problems.add(line.problem or "cost unknown")
        else:
            self.usd += line.cost_usd
            self.credits_usd += line.credits_usd or Decimal(0)


def match_day(
    day: date, lines: list[ExportLine], ledger: list[dict], configured_projects: list[str], tolerance: Tolerance
) -> DayMatch:
    """`lines` (one day's, from `day_lines`) against the ledger's lines of that day (`ledger_lines`)."""
    result = DayMatch(day, lines[0].zone if lines else "UTC")
    ours, result.refused = our_projects(lines, configured_projects)
    result.projects = sorted((ours or set()) & {line.project for line in lines})  # "": a console download's
    invoice = _sort_lines(
        lines, ours, {(line["model"], line["tier"], line["modality"]) for line in ledger if line["tokens"]}, result
    )
    if result.refused is None:
        result.lines = _compare(
            invoice, {tuple(line[name] for name in KEY): line for line in ledger}, result, tolerance
        )
    return result


def _sort_lines(lines: list[ExportLine], ours: set[str] | None, used: set[tuple], result: DayMatch) -> dict:
    """Our compared token lines by key; everything else into `result`'s other spend, unknown SKUs and not ours."""
    invoice: dict[tuple, _Billed] = defaultdict(_Billed)
    not_ours: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0), 0])
    other, unknown, unused = [], [], set()
    for line in lines:
        sku = line.sku
        if sku.category == NOT_GEMINI or ours is None or line.project not in ours or another_spender(line):
            entry = not_ours[(line.project, line.service if not another_spender(line) else _spender(line))]
            entry[0] += 1
            entry[1] += line.cost_usd or Decimal(0)  # the unconverted are counted beside, never as 0
            entry[2] += line.cost_usd is None
        elif sku.category == UNKNOWN_GEMINI:
            unknown.append(_spend(line, "unknown SKU"))
        elif sku.category == OTHER_GEMINI:
            other.append(_spend(line, sku.spend or OTHER_GEMINI))
        elif (model := invoice_model(sku.model or "")) and (model, sku.tier, sku.modality) not in used:
            unused.add(f"{model} ({sku.tier}, {sku.modality})")
            other.append(_spend(line, f"tokens of {model} ({sku.tier}, {sku.modality}) the ledger never used"))
        else:
            invoice[(model, sku.kind, sku.modality, sku.tier, sku.context)].add(line)
    result.not_ours = [
        {
            "project": project or "(none)",
            "service": service,
            "lines": count,
            "cost_usd": usd,
            "unconverted_lines": unconverted,
        }
        for (project, service), (count, usd, unconverted) in sorted(not_ours.items())
    ]
    result.other_spend, result.unknown_skus = _by_sku(other), _by_sku(unknown)
    if unknown:
        names = sorted({row["sku"] for row in unknown})
        result.warnings.append(
            f"{len(names)} Gemini SKU(s) this reader does not know, reported by cost and never "
            f"compared: {'; '.join(names[:5])}. Classify them under [billing.skus] in costs.toml"
        )
    if unused:
        result.warnings.append(
            f"our projects were billed for tokens of {'; '.join(sorted(unused))}, which the "
            "ledger never used this day: reported as other spend"
        )
    return invoice


def another_spender(line: ExportLine) -> bool:
    """A Vertex AI line of our project whose labels say another spender made it (no `pipeline=cost_pipeline`).

    Vertex requests carry labels and the export carries them on, so a project shared with other teams still
    reconciles line by line; a file without a labels column (the console's) cannot tell and is read as ours.
    """
    return line.service == VERTEX_AI and line.labels is not None and line.labels.get("pipeline") != PIPELINE


def _spender(line: ExportLine) -> str:
    pipeline = (line.labels or {}).get("pipeline")
    who = f"pipeline={pipeline}" if pipeline else "not labelled by this pipeline"
    return f"{line.service}, another spender ({who})"


def _compare(
    invoice: dict[tuple, _Billed], ledger: dict[tuple, dict], result: DayMatch, tolerance: Tolerance
) -> list[dict]:
    rows = []
    for key in sorted(set(invoice) | set(ledger)):
        billed = invoice.get(key, _Billed())
        ours = ledger.get(key, {"tokens": 0, "cost_usd": Decimal(0)})
        invoice_usd = None if billed.problems else billed.usd
        usd_gap = None if invoice_usd is None or ours["cost_usd"] is None else invoice_usd - ours["cost_usd"]
        token_gap = billed.tokens - ours["tokens"]
        rows.append(
            {
                "billing_day": result.day,
                "day_zone": result.zone,
                **dict(zip(KEY, key)),
                "invoice_tokens": billed.tokens,
                "ledger_tokens": ours["tokens"],
                "token_gap": token_gap,
                "invoice_usd": invoice_usd,
                "ledger_usd": ours["cost_usd"],
                "usd_gap": usd_gap,
                "credits_usd": billed.credits_usd,
                "currency": ", ".join(sorted(billed.currencies)) or None,
                "within_tolerance": tolerance.allows(token_gap, usd_gap, invoice_usd),
                "skus": "; ".join(sorted(billed.skus)) or None,
                "note": "; ".join(sorted(billed.problems)) or None,
            }
        )
    return rows


def _by_sku(rows: list[dict]) -> list[dict]:
    """Lines of one SKU in one project summed (hourly lines are one row), the costliest first."""
    summed: dict[tuple, dict] = {}
    for row in rows:
        key = (row["project"], row["service"], row["sku"], row["what"], row["unit"], row["currency"])
        if key in summed:
            total = summed[key]
            total["amount"] += row["amount"]
            total["cost_usd"] = (
                None if total["cost_usd"] is None or row["cost_usd"] is None else total["cost_usd"] + row["cost_usd"]
            )
        else:
            summed[key] = dict(row)
    return sorted(summed.values(), key=lambda row: -(row["cost_usd"] or 0))


def _spend(line: ExportLine, what: str) -> dict:
    return {
        "project": line.project,
        "service": line.service,
        "sku": line.sku_description,
        "what": what,
        "amount": line.amount,
        "unit": line.unit,
        "cost_usd": line.cost_usd,
        "currency": line.currency,
    }


def ledger_lines(groups: list[dict], book: PriceBook, day: date) -> list[dict]:
    """The ledger's billed attempts as the invoice splits them, from sums per (model, tier, long context).

    Each group holds the sums of `llm_attempts`' token columns and its three cost columns
    for one served model, tier (`processing`) and context; the costs stay the ledger's own.
    """
    at = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    merged: dict[tuple, dict] = {}
    for group in groups:
        model, tier, long_context = invoice_model(group["model"]), group["tier"], bool(group["long_context"])
        priced_as = Tier(STANDARD, SERVED_AS[tier]) if tier in SERVED_AS else Tier(tier)
        rates = book.modality_rates(group["model"], at, priced_as, long_context) or {}
        costs = (group["input_cost_usd"], group["cached_input_cost_usd"], group["output_cost_usd"])
        counts = lambda name, group=group: int(group.get(name) or 0)  # noqa: E731
        for kind, modality, tokens, cost in invoice_split(counts, costs, rates):
            key = (model, kind, modality, tier, LONG if long_context else SHORT)
            if key in merged:  # two served builds of one invoice model are one invoice line
                line = merged[key]
                line["tokens"] += tokens
                line["cost_usd"] = None if line["cost_usd"] is None or cost is None else line["cost_usd"] + cost
            else:
                merged[key] = {**dict(zip(KEY, key)), "tokens": tokens, "cost_usd": cost}
    return list(merged.values())
