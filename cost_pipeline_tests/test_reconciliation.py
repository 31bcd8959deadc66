"""billing_reconciliation against real Cloud Billing exports: a whole account's lines, Google's wording, currencies,
credits, Pacific days and projects; passing, failing with the line named, skipped, or refusing to guess."""

import csv
import io
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cost_pipeline.definitions import all_assets, all_checks
from cost_pipeline.defs.costs.reconciliation import billing_export_sensor
from cost_pipeline.defs.resources import BillingExports, CostSettings
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.billing_export import PACIFIC, day_bounds, read_export
from cost_pipeline.money.invoice_match import Tolerance, day_lines, match_day
from cost_pipeline.money.ledger import ensure_ledger
from cost_pipeline.money.provider_export import provider_export_csv
from cost_pipeline.money.skus import OTHER_GEMINI, TOKENS, UNKNOWN_GEMINI, classify, describe

from .conftest import local_resources, materialize_day

DAY = date(2026, 11, 1)
FIXTURES = Path(__file__).parent / "fixtures" / "billing"
OURS = "cost-pipeline-prod"


def reconcile(landing_root, database, model_server, billing_folder, day: date, costs=None):
    resources = {
        **local_resources(landing_root, database, model_server, costs),
        "billing": BillingExports(folder=str(billing_folder)),
    }
    return dg.materialize(
        [*all_assets, *all_checks],
        partition_key=str(day),
        resources=resources,
        selection=dg.AssetSelection.assets("billing_reconciliation"),
        raise_on_error=False,
    )


def check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def metadata(result) -> dict:
    (materialization,) = result.asset_materializations_for_node("billing_reconciliation")
    return {key: value.value for key, value in materialization.metadata.items()}


def costs_file(tmp_path: Path, text: str) -> CostSettings:
    path = tmp_path / "costs.toml"
    path.write_text(text)
    return CostSettings(config_file=str(path))


def rows_of(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def billed_day(landing_root, database, model_server, tmp_path):
    """A day through the pipeline with rejected answers, and the provider's export of what it billed."""
    generate(landing_root, DAY, days=1, turns_per_day=80, seed=5)
    model_server.configure(rate_max_tokens=0.1, rate_undeclared_tool=0.1, seed=2)
    materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        gemini={"models": {"function_model": "gemini-flash-lite-latest"}},
        run_config={"ops": {"turns_through_gemini": {"config": {"max_failure_share": 1.0}}}},
    )
    folder = tmp_path / "billing"
    folder.mkdir()
    (folder / "export.csv").write_text(model_server.billing_export(project=OURS))
    billing_day = datetime.now(timezone.utc).date()
    return folder, billing_day


def with_account_noise(folder: Path, billing_day: date) -> None:
    """The fixture account's lines (other projects, services and Gemini spend), re-dated to `billing_day`, mixed
    into our export file as one whole-account export."""
    ours = rows_of(folder / "export.csv")
    noise = rows_of(FIXTURES / "account_export.csv")
    for row in noise:
        for column in ("usage_start_time", "usage_end_time"):
            row[column] = row[column].replace("2026-11-15", str(billing_day))
    write_rows(folder / "export.csv", [{**dict.fromkeys(noise[0]), **row} for row in ours] + noise)


def test_the_ledger_reconciles_with_the_providers_export(billed_day, landing_root, database, model_server):
    folder, billing_day = billed_day
    result = reconcile(landing_root, database, model_server, folder, billing_day)
    assert result.success and check(result).passed
    with duckdb.connect(str(database), read_only=True) as connection:
        lines = connection.execute(
            "SELECT model, kind, modality, tier, invoice_tokens, ledger_tokens, invoice_usd, "
            "ledger_usd FROM billing_reconciliation"
        ).fetchall()
        spend = connection.execute("SELECT sum(cost_usd) FROM llm_attempts").fetchone()[0]
    assert {(kind, modality, tier) for _, kind, modality, tier, *_ in lines} == {
        ("input", "text", "standard"),
        ("cached_input", "text", "standard"),
        ("output", "text", "standard"),
    }
    # The alias was served, and billed, as the concrete model: the invoice never names the alias.
    assert {model for model, *_ in lines} == {"gemini-2.5-flash-lite"}
    assert all(line[4] == line[5] and line[6] == line[7] for line in lines)
    assert sum(line[6] for line in lines) == spend > 0
    assert metadata(result)["projects_compared"] == OURS


def test_a_reconciliation_table_of_the_earlier_grain_is_rebuilt_not_a_schema_error(
    billed_day, landing_root, database, model_server
):
    folder, billing_day = billed_day
    with duckdb.connect(str(database)) as connection:
        connection.execute(
            "CREATE TABLE billing_reconciliation (source VARCHAR, billing_day DATE, model VARCHAR, "
            "kind VARCHAR, processing VARCHAR, partition_date DATE, run_id VARCHAR)"
        )
    result = reconcile(landing_root, database, model_server, folder, billing_day)
    assert result.success and check(result).passed


def test_the_export_is_in_googles_own_sku_wording(model_server, billed_day):
    folder, _ = billed_day
    rows = rows_of(folder / "export.csv")
    catalogue = {
        description: sku_id
        for sku_id, description in (
            describe("gemini-2.5-flash-lite", kind) for kind in ("input", "cached_input", "output")
        )
    }
    assert {row["sku.description"] for row in rows} <= set(catalogue)
    assert all(row["sku.id"] == catalogue[row["sku.description"]] for row in rows)
    assert {row["service.description"] for row in rows} == {"Gemini API"}
    assert all(row["usage_start_time"].endswith(":00:00 UTC") for row in rows)  # hourly lines, as BigQuery's


def test_a_whole_account_export_reconciles_our_project_and_reports_the_rest(
    billed_day, landing_root, database, model_server, tmp_path
):
    folder, billing_day = billed_day
    with_account_noise(folder, billing_day)
    costs = costs_file(tmp_path, f'[billing]\nprojects = ["{OURS}"]\n')
    result = reconcile(landing_root, database, model_server, folder, billing_day, costs)
    assert result.success and check(result).passed, check(result).description
    found = metadata(result)
    # The second project's lines for our very model are filtered out, and named.
    assert "other-team-project" in found["projects_excluded"] and "vertex-team-project" in found["projects_excluded"]
    other = found["other_spend_in_our_projects"]
    for what in (
        "context cache storage",
        "embeddings",
        "Live API",
        "grounding and search",
        "tokens of gemini-2.5-flash-image",
        "tokens of gemini-2.5-flash (standard, text)",
    ):
        assert what in other, what
    assert Decimal(found["other_spend"].lstrip("$").replace(",", "")) > 10  # the image generation alone is $8.49
    assert "Cloud Storage" in found["not_ours"] and "Compute Engine" in found["not_ours"]


def test_one_token_off_on_one_of_our_lines_fails_and_names_it(
    billed_day, landing_root, database, model_server, tmp_path
):
    folder, billing_day = billed_day
    with_account_noise(folder, billing_day)
    rows = rows_of(folder / "export.csv")
    output = next(r for r in rows if r["project.id"] == OURS and "flash lite short output" in r["sku.description"])
    output["usage.amount"] = str(int(output["usage.amount"]) + 1)
    write_rows(folder / "export.csv", rows)
    costs = costs_file(tmp_path, f'[billing]\nprojects = ["{OURS}"]\n')
    evaluation = check(reconcile(landing_root, database, model_server, folder, billing_day, costs))
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "largest: gemini-2.5-flash-lite output text (standard, short)" in evaluation.description
    assert "+1 tokens" in evaluation.description
    assert evaluation.metadata["lines_off"].value == 1


def test_several_projects_and_no_setting_compare_nothing_and_say_so(billed_day, landing_root, database, model_server):
    folder, billing_day = billed_day
    with_account_noise(folder, billing_day)
    result = reconcile(landing_root, database, model_server, folder, billing_day)
    evaluation = check(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "[billing] projects" in evaluation.description and OURS in evaluation.description
    assert metadata(result)["lines"] == 0


def test_the_local_servers_own_project_needs_no_setting(billed_day, landing_root, database, model_server):
    folder, billing_day = billed_day
    (folder / "export.csv").write_text(model_server.billing_export(project="local-gemini-server"))
    result = reconcile(landing_root, database, model_server, folder, billing_day)
    assert check(result).passed and metadata(result)["projects_compared"] == "local-gemini-server"


def test_a_day_without_an_export_is_skipped_never_failed(billed_day, landing_root, database, model_server, tmp_path):
    empty = tmp_path / "no_exports"
    result = reconcile(landing_root, database, model_server, empty, DAY)
    assert result.success
    assert not result.asset_materializations_for_node("billing_reconciliation")
    assert not result.get_asset_check_evaluations()


def test_the_sensor_requests_each_day_an_export_covers(billed_day):
    folder, billing_day = billed_day
    context = dg.build_sensor_context(
        resources={"billing": BillingExports(folder=str(folder)), "costs": CostSettings()}
    )
    requests = billing_export_sensor(context).run_requests
    assert [r.partition_key for r in requests] == [str(billing_day)]
    empty = dg.build_sensor_context(
        resources={"billing": BillingExports(folder=str(folder / "none")), "costs": CostSettings()}
    )
    assert billing_export_sensor(empty).run_requests == []


REAL_OUTPUT_LINE = {
    "model": "gemini-2.5-flash",
    "kind": "output",
    "modality": "text",
    "tier": "standard",
    "context": "short",
    "tokens": 622_403,
    "cost_usd": Decimal("1.5560075"),
}
"""The ledger's side of the real line 911A-8880-A243 bills: 622,403 output tokens at their list price ($2.50 per M)."""

EXPECTED = {row["sku_description"]: row for row in csv.DictReader((FIXTURES / "expected_classes.csv").open())}
"""What every SKU of the fixture account is, written by hand from each SKU's meaning (README beside it)."""


def test_every_line_of_a_real_account_export_is_classified_and_none_aborts():
    lines = read_export(FIXTURES / "account_export.csv")
    assert len(lines) == 50 and {line.sku_description.strip() for line in lines} == set(EXPECTED)
    for line in lines:
        expected, sku = EXPECTED[line.sku_description.strip()], line.sku
        what = sku.category if sku.category != OTHER_GEMINI else f"{OTHER_GEMINI}:{sku.spend}"
        assert what == expected["class"], line.sku_description
        if sku.category == TOKENS:
            assert (sku.model, sku.kind, sku.modality, sku.tier, sku.context) == tuple(
                expected[name] for name in ("model", "kind", "modality", "tier", "context")
            ), line.sku_description
    credited = [line for line in lines if line.credits]
    assert {line.credits for line in credited} == {Decimal("-0.05"), Decimal("-0.2")}
    assert all(line.cost_usd == line.cost for line in lines)  # gross, in dollars


def test_an_unknown_gemini_sku_is_reported_by_name_never_mapped_and_an_override_can_classify_it(tmp_path):
    assert classify("Gemini API", "Generate content something new gemini 9 flash").category == UNKNOWN_GEMINI
    assert classify("Gemini API", "Our negotiated line").category == UNKNOWN_GEMINI
    overrides = {"Our negotiated line": "gemini-2.5-flash/output/audio/priority", "Odd fee": "other_gemini"}
    sku = classify("Gemini API", "Our negotiated line", overrides)
    assert (sku.category, sku.model, sku.kind, sku.modality, sku.tier) == (
        TOKENS,
        "gemini-2.5-flash",
        "output",
        "audio",
        "priority",
    )
    assert classify("Gemini API", "Odd fee", overrides).category == OTHER_GEMINI
    with pytest.raises(ValueError, match="kind"):
        classify("Gemini API", "Our negotiated line", {"Our negotiated line": "gemini-2.5-flash/outbound"})
    path = tmp_path / "export.csv"
    rows = rows_of(FIXTURES / "account_export.csv")
    rows[0]["sku.description"] = "Generate content something new gemini 9 flash"
    write_rows(path, rows)
    match = match_day(date(2026, 11, 15), read_export(path), [], [OURS], Tolerance())
    assert [row["sku"] for row in match.unknown_skus] == ["Generate content something new gemini 9 flash"]
    assert any("does not know" in warning for warning in match.warnings)


def test_underscore_columns_from_a_bq_query_read_like_dotted_ones(tmp_path):
    text = (FIXTURES / "account_export.csv").read_text()
    header, rest = text.split("\n", 1)
    (tmp_path / "query.csv").write_text(header.replace(".", "_") + "\n" + rest)
    assert [(line.sku, line.tokens, line.cost_usd, line.project) for line in read_export(tmp_path / "query.csv")] == [
        (line.sku, line.tokens, line.cost_usd, line.project) for line in read_export(FIXTURES / "account_export.csv")
    ]


def test_a_console_download_in_euros_is_refused_without_a_rate_and_read_with_one():
    path = FIXTURES / "console_reports_eur.csv"
    lines = read_export(path)
    assert len(lines) == 3  # the subtotal line is not a line
    assert {(line.layout, line.zone, line.currency) for line in lines} == {("console", PACIFIC, "EUR")}
    assert all(line.cost_usd is None and "EUR" in line.problem for line in lines)
    converted = read_export(path, currency_rates={"EUR": Decimal("0.92")})
    by_sku = {line.sku_id: line for line in converted}
    # The console's subtotal is net of its savings: -0.05 EUR is added back to give the gross 0.547575.
    assert by_sku["981A-C057-0BF9"].cost == Decimal("0.547575") and by_sku["981A-C057-0BF9"].credits == Decimal("-0.05")
    assert by_sku["911A-8880-A243"].cost_usd == (Decimal("1.431511") / Decimal("0.92")).quantize(Decimal("1e-12"))
    assert by_sku["981A-C057-0BF9"].tokens == 1_983_966
    used = [REAL_OUTPUT_LINE]
    matched = match_day(date(2026, 11, 15), lines, used, [], Tolerance())
    (line,) = [row for row in matched.lines if row["kind"] == "output"]
    assert line["invoice_tokens"] == line["ledger_tokens"] and line["invoice_usd"] is None
    assert not line["within_tolerance"] and "EUR" in line["note"]


def test_the_console_dates_by_pacific_day_and_the_ledger_is_cut_the_same_way(
    landing_root, database, model_server, tmp_path
):
    """A UTC day's attempts fall in two Pacific days: the console's line for one Pacific day meets only its attempts."""
    ensure_ledger(database)
    pacific_day = date(2026, 11, 15)
    start, end = day_bounds(pacific_day, PACIFIC)
    assert (start, end) == (
        datetime(2026, 11, 15, 8, tzinfo=timezone.utc),
        datetime(2026, 11, 16, 8, tzinfo=timezone.utc),
    )  # PST is UTC-8
    with duckdb.connect(str(database)) as connection:
        for number, sent_at in enumerate([start - timedelta(minutes=1), start, end - timedelta(seconds=1), end]):
            connection.execute(
                "INSERT INTO llm_attempts (attempt_id, partition_date, model, model_version, processing, sent_at, "
                "billed, input_tokens, cached_tokens, output_tokens, thinking_tokens, tool_prompt_tokens, "
                "input_cost_usd, cached_input_cost_usd, output_cost_usd, cost_usd) "
                "VALUES (?, '2026-11-15', 'gemini-2.5-flash', 'gemini-2.5-flash', 'standard', ?, true, "
                "100000, 0, 10000, 0, 0, 0.03, 0, 0.025, 0.055)",
                [f"a{number}", sent_at],
            )
    folder = tmp_path / "console"
    folder.mkdir()
    flash = "Generate content {} token count gemini 2.5 flash short input text"
    (folder / "reports.csv").write_text(
        "Date,Service description,Service ID,SKU description,SKU ID,Usage amount,Usage unit,Unrounded subtotal ($)\n"
        f'{pacific_day},Gemini API,AEFD-7695-64FA,{flash.format("input")},981A-C057-0BF9,"200,000",count,0.060000\n'
        f'{pacific_day},Gemini API,AEFD-7695-64FA,{flash.format("output")},911A-8880-A243,"20,000",count,0.050000\n'
    )
    result = reconcile(landing_root, database, model_server, folder, pacific_day)
    assert check(result).passed, check(result).description
    assert metadata(result)["day_zone"] == PACIFIC
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT sum(ledger_tokens) FROM billing_reconciliation").fetchone()[0] == 220_000


def test_the_tolerance_holds_what_google_really_bills_and_no_more():
    billed = read_export(FIXTURES / "account_export.csv")
    lines, _ = day_lines(billed, date(2026, 11, 15))
    output = [line for line in lines if line.sku_id == "911A-8880-A243"]
    ledger = [REAL_OUTPUT_LINE]
    (line,) = match_day(date(2026, 11, 15), output, ledger, [OURS], Tolerance()).lines
    assert line["usd_gap"] == Decimal("-0.0000175") and line["within_tolerance"]
    off = [{**ledger[0], "cost_usd": Decimal("1.5560075") * Decimal("1.0002")}]
    assert not match_day(date(2026, 11, 15), output, off, [OURS], Tolerance()).lines[0]["within_tolerance"]
    assert not match_day(date(2026, 11, 15), output, ledger, [OURS], Tolerance(usd_relative=Decimal(0))).lines[0][
        "within_tolerance"
    ]


def test_a_day_is_read_from_one_layout_never_from_both():
    both = read_export(FIXTURES / "account_export.csv") + read_export(FIXTURES / "console_reports_eur.csv")
    lines, warnings = day_lines(both, date(2026, 11, 15))
    assert lines and {line.layout for line in lines} == {"bigquery"}
    assert "console_reports_eur.csv" in warnings[0] and "Pacific" in warnings[0]


def test_a_line_without_a_cost_is_never_read_as_zero(tmp_path):
    """The local server bills a model nobody prices with no cost on its line; the reader keeps it unknown."""
    usage = {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110}
    (tmp_path / "export.csv").write_text(
        provider_export_csv([{"model": "gemini-9.9-flash", "at": 1_764_000_000, "usage": usage}])
    )
    lines = read_export(tmp_path / "export.csv")
    assert {(line.sku.kind, line.tokens) for line in lines} == {("input", 100), ("output", 10)}
    assert all(line.cost is None and line.cost_usd is None and "no cost" in line.problem for line in lines)
