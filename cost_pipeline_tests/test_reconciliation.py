"""billing_reconciliation: the ledger against the provider's own billing export, passing, failing with the gap named, skipped."""

import csv
import io
from datetime import date, datetime, timezone
from decimal import Decimal

import dagster as dg
import duckdb
import pytest

from cost_pipeline.costs.billing import (
    UnknownSku, billing_model, compare, parse_sku, read_export, sku_description, sku_processing,
)
from cost_pipeline.costs.reconciliation import billing_export_sensor
from cost_pipeline.definitions import all_assets, all_checks
from cost_pipeline.resources import BillingExports, CostSettings
from cost_pipeline.synthetic import generate

from .conftest import local_resources, materialize_day

DAY = date(2026, 11, 1)


def reconcile(landing_root, database, model_server, billing_folder, day: date, costs=None):
    resources = {**local_resources(landing_root, database, model_server, costs),
                 "billing": BillingExports(folder=str(billing_folder))}
    return dg.materialize([*all_assets, *all_checks], partition_key=str(day), resources=resources,
                          selection=dg.AssetSelection.assets("billing_reconciliation"), raise_on_error=False)


def check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


@pytest.fixture
def billed_day(landing_root, database, model_server, tmp_path):
    """A day through the pipeline with rejected answers, and the provider's export of what it billed."""
    generate(landing_root, DAY, days=1, turns_per_day=80, seed=5)
    model_server.configure(rate_max_tokens=0.1, rate_undeclared_tool=0.1, seed=2)
    materialize_day(DAY, landing_root, database, model_server, gemini={"function_model": "gemini-flash-lite-latest"},
                    run_config={"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}})
    folder = tmp_path / "billing"
    folder.mkdir()
    (folder / "export.csv").write_text(model_server.billing_export())
    billing_day = datetime.now(timezone.utc).date()
    return folder, billing_day


def test_the_ledger_reconciles_with_the_providers_export(billed_day, landing_root, database, model_server):
    folder, billing_day = billed_day
    result = reconcile(landing_root, database, model_server, folder, billing_day)
    assert result.success and check(result).passed
    with duckdb.connect(str(database), read_only=True) as connection:
        lines = connection.execute("SELECT model, kind, invoice_tokens, ledger_tokens, invoice_usd, ledger_usd "
                                   "FROM billing_reconciliation").fetchall()
        spend = connection.execute("SELECT sum(cost_usd) FROM llm_attempts").fetchone()[0]
    assert {kind for _, kind, *_ in lines} == {"input", "cached_input", "output"}
    # The alias was served, and billed, as the concrete model: the invoice never names the alias.
    assert {model for model, *_ in lines} == {"gemini-2.5-flash-lite"}
    assert all(invoice == ledger for _, _, invoice, ledger, _, _ in lines)
    assert sum(line[4] for line in lines) == spend > 0


def test_one_altered_export_line_fails_the_check_and_names_the_gap(billed_day, landing_root, database, model_server):
    folder, billing_day = billed_day
    path = folder / "export.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    output = next(r for r in rows if "output token" in r["sku.description"])
    output["usage.amount"] = str(int(output["usage.amount"]) + 1000)
    output["cost"] = str(Decimal(output["cost"]) + Decimal("0.0004"))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    evaluation = check(reconcile(landing_root, database, model_server, folder, billing_day))
    assert not evaluation.passed
    assert "largest: gemini-2.5-flash-lite output" in evaluation.description and "+1,000 tokens, $+0.000400" in evaluation.description
    assert evaluation.metadata["lines_off"].value == 1


def test_a_day_without_an_export_is_skipped_never_failed(billed_day, landing_root, database, model_server, tmp_path):
    empty = tmp_path / "no_exports"
    result = reconcile(landing_root, database, model_server, empty, DAY)
    assert result.success
    assert not result.asset_materializations_for_node("billing_reconciliation")
    assert not result.get_asset_check_evaluations()


def test_the_sensor_requests_each_day_an_export_covers(billed_day):
    folder, billing_day = billed_day
    context = dg.build_sensor_context(resources={"billing": BillingExports(folder=str(folder)), "costs": CostSettings()})
    requests = billing_export_sensor(context).run_requests
    assert [r.partition_key for r in requests] == [str(billing_day)]
    empty = dg.build_sensor_context(resources={"billing": BillingExports(folder=str(folder / "none")), "costs": CostSettings()})
    assert billing_export_sensor(empty).run_requests == []


@pytest.mark.parametrize("description,expected", [
    ("Generate content input token count gemini 2.5 flash short input text", ("gemini-2.5-flash", "input")),
    ("Generate content output token count gemini 2.5 flash lite short output text non-thinking", ("gemini-2.5-flash-lite", "output")),
    ("Generate_content text cached input token count for gemini 2.5 Flash Lite", ("gemini-2.5-flash-lite", "cached_input")),
    ("Generate content cached input token count Gemini 2.5 Pro short input", ("gemini-2.5-pro", "cached_input")),
    (sku_description("gemini-2.5-flash-lite", "output"), ("gemini-2.5-flash-lite", "output")),
])
def test_real_sku_descriptions_map_to_model_and_kind(description, expected):
    assert parse_sku(description) == expected


def test_batch_skus_are_their_own_lines_and_an_override_can_say_batch():
    batch = sku_description("gemini-2.5-flash", "input", "batch")
    assert parse_sku(batch) == ("gemini-2.5-flash", "input") and sku_processing(batch) == "batch"
    assert sku_processing(sku_description("gemini-2.5-flash", "input")) == "standard"
    assert sku_processing("Gemini 2.5 Flash Lite Batch output tokens") == "batch"
    assert sku_processing("Our odd SKU", {"Our odd SKU": "gemini-2.5-flash/output/batch"}) == "batch"
    with pytest.raises(UnknownSku, match="batch"):
        parse_sku("Our odd SKU", {"Our odd SKU": "gemini-2.5-flash/output/flex"})
    slashed = {"Our odd SKU": "models/gemini-2.5-flash/input/batch"}  # a model name may hold '/'
    assert parse_sku("Our odd SKU", slashed) == ("models/gemini-2.5-flash", "input")
    assert sku_processing("Our odd SKU", slashed) == "batch"
    # The same tokens at the two prices are two lines, never one netted total.
    day = date(2026, 11, 1)
    invoice = [{"source": "provider", "day": day, "model": "gemini-2.5-flash", "kind": "input", "processing": processing,
                "tokens": 100, "cost_usd": Decimal(usd)} for processing, usd in (("standard", "0.00003"), ("batch", "0.000015"))]
    ledger = [{**invoice[0], "cost_usd": Decimal("0.000015")}, {**invoice[1], "cost_usd": Decimal("0.00003")}]
    lines = compare(invoice, ledger, 0, Decimal("0.000001"))
    assert [(line["processing"], line["within_tolerance"]) for line in lines] == [("batch", False), ("standard", False)]


def test_an_unmappable_sku_says_how_to_map_it_and_an_override_does():
    with pytest.raises(UnknownSku, match=r"\[billing.skus\]"):
        parse_sku("Vertex AI Prediction node hours")
    assert parse_sku("Our odd SKU", {"Our odd SKU": "gemini-2.5-flash/output"}) == ("gemini-2.5-flash", "output")


def test_the_console_reports_download_is_read_too(tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text(
        "Date,Service description,Service ID,SKU description,SKU ID,Usage amount,Usage unit,List cost ($),"
        "Negotiated savings ($),Savings programs ($),Other savings ($),Unrounded subtotal ($),Subtotal ($)\n"
        "2026-08-15,Gemini API,AEFD-7695-64FA,Generate content output token count gemini 2.5 flash short input text,"
        '911A-8880-A243,"622,403",count,1.56,0.00,0.00,0.00,1.555990,1.56\n'
        "2026-08-15,Cloud Storage,95FF-2EF5-5EA1,Standard Storage,E5F0-6A5D-7BAD,3,gibibyte month,0.06,0,0,0,0.06,0.06\n")
    assert read_export(path) == [{"source": "provider", "day": date(2026, 8, 15), "model": "gemini-2.5-flash", "kind": "output",
                                  "processing": "standard", "sku": "Generate content output token count gemini 2.5 flash short input text",
                                  "tokens": 622_403, "cost_usd": Decimal("1.555990")}]


def test_served_model_versions_map_to_the_invoice_model():
    assert billing_model("gemini-2.5-flash-lite-preview-09-2025") == "gemini-2.5-flash-lite"
    assert billing_model("gemini-2.5-pro") == "gemini-2.5-pro"


def test_the_local_servers_own_invoice_is_never_held_against_attempts_another_endpoint_answered(
        billed_day, landing_root, database, model_server):
    folder, billing_day = billed_day
    (folder / "export.csv").write_text(model_server.billing_export(project="local-gemini-server"))
    result = reconcile(landing_root, database, model_server, folder, billing_day)
    with duckdb.connect(str(database), read_only=True) as connection:
        sides = connection.execute("SELECT DISTINCT source, ledger_tokens FROM billing_reconciliation").fetchall()
    assert sides and all(source == "local-server" and ledger == 0 for source, ledger in sides)
    assert not check(result).passed
