"""Recorded answers of Google's servers priced by the pipeline's own parsing and price book, against genai-prices.

Each body in `cost_pipeline_tests/fixtures/responses/` (recorded by public projects) is read as the
stage reads an answer (google-genai's usage model, then `usage_from_metadata`) and priced as the
ledger prices it: requested `gemini-2.5-flash-lite` (the pipeline's default), served as the body's
`modelVersion` says. The reference is genai-prices' own extractor and `calc_price` for the same body,
with the served model named as prices name it. Prints one line per body that differs and a summary;
uses only functions the pipeline has had since the ledger existed, so it runs on earlier commits too.

    python bench/recorded_responses.py [--limit N]
"""

import argparse
import json
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import genai_prices
from google.genai import types

sys.path.insert(0, str(Path(__file__).parents[1]))
from results import record  # noqa: E402

from cost_pipeline.gemini.usage import usage_from_metadata  # noqa: E402
from cost_pipeline.money.pricing import PriceBook, token_counts  # noqa: E402

RESPONSES = Path(__file__).parents[1] / "cost_pipeline_tests" / "fixtures" / "responses"
REQUESTED = "gemini-2.5-flash-lite"
AT = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)
_FIELDS = {field.alias or name for name, field in types.GenerateContentResponseUsageMetadata.model_fields.items()}


def sdk_metadata(usage: dict | None):
    """The body's usageMetadata as google-genai's model holds it (fields it does not know, serviceTier say, dropped)."""
    if usage is None:
        return None
    return types.GenerateContentResponseUsageMetadata.model_validate({k: v for k, v in usage.items() if k in _FIELDS})


def reference(body: dict) -> Decimal | None:
    """genai-prices' price of the body; None when it carries no token count."""
    served = (body.get("modelVersion") or "").lower().rpartition("models/")[2]
    try:
        extracted = genai_prices.extract_usage({**body, "modelVersion": served}, provider_id="google")
    except ValueError:
        return None
    return extracted.calc_price(genai_request_timestamp=AT).total_price


def ours(body: dict, book: PriceBook) -> tuple[str, Decimal | None]:
    """(how the pipeline records it, what the ledger would hold): reported, estimated (no usage read) or unknown."""
    usage = usage_from_metadata(sdk_metadata(body.get("usageMetadata")))
    if usage is None:
        return "estimated", None
    if getattr(usage, "source", "reported") == "unknown":
        return "unknown", None
    return "reported", book.cost(REQUESTED, token_counts(usage), AT, body.get("modelVersion")).total_cost


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N bodies (0: all)")
    args = parser.parse_args(argv)
    paths = sorted(RESPONSES.glob("*.json"))[: args.limit or None]
    book = PriceBook()
    figures = {
        "bodies": len(paths),
        "match": 0,
        "under": 0,
        "over": 0,
        "estimated_without_counts": 0,
        "unknown_without_counts": 0,
        "worst_ratio": 1.0,
    }
    for path in paths:
        body = json.loads(path.read_text())["body"]
        expected = reference(body)
        how, cost = ours(body, book)
        if expected is None:
            figures["estimated_without_counts" if how == "estimated" else "unknown_without_counts"] += 1
            if how == "estimated":
                print(f"{path.stem}: no token counts, yet the pipeline estimates a cost")
            continue
        if cost is not None and cost == expected.quantize(cost):
            figures["match"] += 1
            continue
        ratio = float(cost / expected) if cost is not None and expected else 0.0
        figures["under" if ratio < 1 else "over"] += 1
        figures["worst_ratio"] = min(figures["worst_ratio"], ratio) if ratio < 1 else figures["worst_ratio"]
        print(
            f"{path.stem}: ledger {cost} vs genai-prices {expected} ({1 / ratio if ratio else float('inf'):.1f}x "
            f"{'too low' if ratio < 1 else 'too high'})"
        )
    priced = figures["bodies"] - figures["estimated_without_counts"] - figures["unknown_without_counts"]
    print(
        f"{figures['match']} of {priced} bodies with token counts priced exactly as genai-prices prices them; "
        f"{figures['under']} under, {figures['over']} over; of {figures['bodies'] - priced} without counts, "
        f"{figures['estimated_without_counts']} estimated into spend, "
        f"{figures['unknown_without_counts']} billing unknown"
    )
    record(
        "recorded_responses.py",
        f"recorded answers of Google's servers, {figures['bodies']} bodies, against genai-prices' own `calc_price`",
        f"**{figures['match']} of {priced}** with token counts priced to the digit ({figures['under']} under, "
        f"{figures['over']} over); {figures['unknown_without_counts']} without counts billing unknown, "
        f"{figures['estimated_without_counts']} estimated",
        "all",
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
