"""What the tokens actually billed would have cost on another price list: other models, or the Batch API's rates.

The same token counts (every billed attempt of the range in `llm_attempts`, each priced at
the price in force when it was sent) are re-priced with genai-prices for each scenario and
set beside what was actually billed. It answers "what if these calls had gone to model X,
or through batch processing" for the price alone: another model would have produced other
token counts, which no re-pricing can know, and the output says so. Attempts whose billing
is unknown have no token counts and are left out, also said. Read-only; Decimal throughout.
"""

from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal

from cost_pipeline.gemini.traffic import SERVED_AS
from cost_pipeline.gemini.usage import PRICED_FIELDS, Usage
from cost_pipeline.money.ledger import TABLE
from cost_pipeline.money.pricing import STANDARD, PriceBook, Tier
from cost_pipeline.storage.connect import connect, one_row
from cost_pipeline.storage.tables import table_exists

ACTUAL = "actual (as billed)"
LABEL = "same token counts, priced as"
_TOKENS = PRICED_FIELDS
_N = len(_TOKENS)


@dataclass(frozen=True)
class Scenario:
    name: str
    attempts: int
    input_tokens: int
    output_tokens: int
    usd: Decimal | None  # None: a model in it has no price
    unpriced_attempts: int = 0


def what_if(
    database: str, start: date, end: date, models: list[str], processing: str, book: PriceBook
) -> tuple[list[Scenario], int]:
    """The actual spend, then one scenario per model in `models` (or, when empty, each attempt on its own model) at
    `processing`: standard, batch, or a served tier, flex or priority (never standard where the tier has no price).

    Returns the scenarios and the number of billing-unknown attempts left out of every row.
    """
    with connect(database, read_only=True) as connection:
        if not table_exists(connection, "main", TABLE):
            return [Scenario(ACTUAL, 0, 0, 0, Decimal(0))], 0
        # Identical token counts on one model and day price alike: priced once, times their number.
        groups = connection.execute(
            f"""
            SELECT coalesce(model_version, model), model, (sent_at AT TIME ZONE 'UTC')::DATE AS day,
                   {", ".join(f"coalesce({t}, 0)" for t in _TOKENS)}, count(*), sum(cost_usd), count(cost_usd)
            FROM {TABLE} WHERE billed AND partition_date BETWEEN ? AND ?
            GROUP BY ALL""",
            [start, end],
        ).fetchall()
        (unknown,) = one_row(
            connection,
            f"SELECT count(*) FROM {TABLE} WHERE billed IS NULL AND partition_date BETWEEN ? AND ?",
            [start, end],
        )
    attempts = sum(g[3 + _N] for g in groups)
    input_tokens = sum(g[3] for g in groups)
    output_tokens = sum(g[5] + g[6] for g in groups)
    actual_unpriced = sum(g[3 + _N] - g[5 + _N] for g in groups)
    actual = Scenario(
        ACTUAL,
        attempts,
        input_tokens,
        output_tokens,
        sum((g[4 + _N] or Decimal(0) for g in groups), Decimal(0)),
        actual_unpriced,
    )
    scenarios = [actual]
    targets: list[str | None] = [*models] or [None]  # None: each attempt on the model that served it
    for target in targets:
        total, unpriced = Decimal(0), 0
        tier = Tier(STANDARD, SERVED_AS[processing]) if processing in SERVED_AS else Tier(processing)
        for served, requested, day, *counts in groups:
            tokens, number = Usage(**dict(zip(PRICED_FIELDS, counts[:_N]))), counts[_N]
            at = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
            cost = (
                book.cost(target, tokens, at, processing=tier)
                if target
                else book.cost(requested, tokens, at, served, tier)
            ).total_cost
            if cost is None:
                unpriced += number
            else:
                total += cost * number
        mode = f"{processing} tier" if processing in SERVED_AS else f"{processing} processing"
        scenarios.append(
            Scenario(
                f"{LABEL} {target or 'the models used'}, {mode}",
                attempts,
                input_tokens,
                output_tokens,
                None if unpriced == attempts and attempts else total,
                unpriced,
            )
        )
    return scenarios, unknown


def render(scenarios: list[Scenario], unknown: int, start: date, end: date) -> str:
    """A table: each scenario's USD and its ratio to the actual spend, with what every row leaves out."""
    actual = scenarios[0].usd or Decimal(0)
    width = max(len(s.name) for s in scenarios)
    header = (
        f"{'scenario':<{width}}  {'attempts':>9}  {'input_tokens':>13}  {'output_tokens':>13}  "
        f"{'usd':>12}  {'x actual':>8}"
    )
    lines = [
        f"Billed attempts of {start} to {end}, re-priced (the same token counts on another price list; another "
        "model would have used other token counts):",
        header,
        "-" * len(header),
    ]
    for scenario in scenarios:
        usd = "no price" if scenario.usd is None else f"{scenario.usd:.6f}"
        ratio = f"{scenario.usd / actual:.3f}" if scenario.usd is not None and actual else "-"
        lines.append(
            f"{scenario.name:<{width}}  {scenario.attempts:>9,}  {scenario.input_tokens:>13,}  "
            f"{scenario.output_tokens:>13,}  {usd:>12}  {ratio:>8}"
        )
        if scenario.unpriced_attempts and scenario.usd is not None:
            lines.append(f"{'':<{width}}  ({scenario.unpriced_attempts:,} attempts without a price are left out)")
    if unknown:
        lines.append(
            f"{unknown:,} attempts were billed for usage never seen (billing unknown): every row leaves them out"
        )
    return "\n".join(lines)
