"""Costs end to end: several real days, rollups against independent sums, every check passing and failing."""

import json
import os
from datetime import date, datetime, timezone
from decimal import Decimal

import dagster as dg
import duckdb
import pytest

from cost_pipeline.definitions import all_assets, all_checks
from cost_pipeline.defs.automation import daily_pipeline_schedule, late_landing_sensor
from cost_pipeline.defs.resources import CostSettings, LandingResource
from cost_pipeline.gemini_step.writer_process import WriterProcess
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.pricing import PriceBook

from .conftest import SMALL_DAYS_COSTS, local_resources, materialize_day
from .conftest import THREE_DAYS as DAYS

COSTS = ["input_cost_usd", "cached_input_cost_usd", "output_cost_usd", "total_cost_usd", "saved_cost_usd"]
TOKENS = ["input_tokens", "cached_tokens", "output_tokens", "thinking_tokens", "tool_prompt_tokens", "total_tokens"]


def fetch(database, sql, params=None):
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql, params or []).fetchall()


def evaluation_totals(landing_root, database, model_server, costs=None):
    return dg.materialize(
        [*all_assets, *all_checks],
        resources=local_resources(landing_root, database, model_server, costs),
        selection=dg.AssetSelection.assets("evaluation_costs"),
        raise_on_error=False,
    )


def check_results(result) -> dict:
    return {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}


def test_rollups_equal_sums_computed_independently_from_the_calls(three_days, database):
    calls = fetch(
        database,
        f"SELECT partition_date, evaluation_id, model, stage, cache_hit, status, {', '.join(TOKENS + COSTS)} "
        "FROM llm_calls",
    )
    expected: dict[tuple, list] = {}
    for day, evaluation, model, stage, cache_hit, status, *values in calls:
        sums = expected.setdefault(
            (day, evaluation, model, stage), [0, 0, 0] + [0] * len(TOKENS) + [Decimal(0)] * len(COSTS)
        )
        sums[0] += 1
        sums[1] += int(cache_hit)
        sums[2] += int(status == "failed")
        for i, value in enumerate(values):
            sums[3 + i] += value
    rollup = fetch(
        database,
        f"SELECT partition_date, evaluation_id, model, stage, calls, cache_hits, failures, "
        f"{', '.join(TOKENS + COSTS)} FROM daily_cost_rollup",
    )
    assert {tuple(r[:4]): list(r[4:]) for r in rollup} == expected
    assert {key[2] for key in expected} == {"gemini-2.5-flash-lite", "gemini-2.5-flash"}
    assert all(isinstance(v, Decimal) for r in rollup for v in r[-len(COSTS) :])
    day_total = sum((v[3 + len(TOKENS) + 3] for k, v in expected.items() if k[0] == DAYS[0]), Decimal(0))
    metadata = three_days[0].asset_materializations_for_node("daily_cost_rollup")[0].metadata
    assert metadata["data_cost"].value == f"${day_total:,.6f}"
    # Money first on the asset page, each figure once; the exact Decimals are the table's.
    assert list(metadata)[:3] == ["spend", "data_cost", "saved"], "money comes first on the asset page"
    assert not [name for name in metadata if name.endswith(("_usd", "_usd_exact"))]
    assert 0 < metadata["cache_hit_pct"].value < 100
    table = metadata["by_evaluation_and_model"].value
    assert table.splitlines()[:2] == [
        "| evaluation | model | calls | spend | cost of the data |",
        "|---|---|---:|---:|---:|",  # text left, numbers right
    ]
    assert (
        f"| **all** |  | {metadata['calls'].value} | {metadata['spend'].value} | {metadata['data_cost'].value} |"
        in table
    )
    assert metadata["calls"].value == sum(v[0] for k, v in expected.items() if k[0] == DAYS[0])


def test_every_check_passes_on_a_healthy_day(three_days):
    results = check_results(three_days[-1])
    assert results == {
        name: (True, dg.AssetCheckSeverity.ERROR)
        for name in (
            "rollup_reconciles_with_calls",
            "spend_matches_ledger",
            "calls_have_usage",
            "costs_are_valid",
            "batch_from_one_run",
        )
    } | {
        name: (True, dg.AssetCheckSeverity.WARN)
        for name in ("prices_are_known", "quarantine_share", "failed_turn_share")
    }


def test_cleaned_turns_carry_their_own_costs(three_days, database):
    mismatches = fetch(
        database,
        """
        SELECT count(*) FROM cleaned_turns t
        LEFT JOIN llm_calls c ON c.turn_id = t.turn_id AND c.stage = 'clean'
        LEFT JOIN llm_calls f ON f.turn_id = t.turn_id AND f.stage = 'function'
        WHERE t.cleaning_cost_usd IS DISTINCT FROM c.total_cost_usd
           OR t.function_cost_usd IS DISTINCT FROM coalesce(f.total_cost_usd, 0)
           OR t.total_cost_usd IS DISTINCT FROM t.cleaning_cost_usd + t.function_cost_usd""",
    )
    assert mismatches == [(0,)]
    assert fetch(
        database, "SELECT sum(total_cost_usd) = (SELECT sum(total_cost_usd) FROM llm_calls) FROM cleaned_turns"
    ) == [(True,)]


def test_rematerializing_the_rollup_gives_identical_rows(three_days, landing_root, database, model_server):
    query = "SELECT * EXCLUDE (run_id) FROM daily_cost_rollup ORDER BY ALL"
    before = fetch(database, query)
    dg.materialize(
        [*all_assets, *all_checks],
        partition_key=str(DAYS[1]),
        resources=local_resources(landing_root, database, model_server),
        selection=dg.AssetSelection.assets("daily_cost_rollup"),
    )
    assert fetch(database, query) == before


def test_evaluation_costs_and_the_budget_check(three_days, landing_root, database, model_server, tmp_path):
    total = fetch(database, "SELECT sum(total_cost_usd) FROM llm_calls")[0][0]
    per_eval = dict(fetch(database, "SELECT evaluation_id, sum(total_cost_usd) FROM llm_calls GROUP BY 1"))
    biggest = max(per_eval, key=per_eval.get)
    budgets = tmp_path / "costs.toml"
    budgets.write_text(f'[budgets]\ndefault = "1000"\n"{biggest}" = "{per_eval[biggest] / Decimal("0.9")}"\n')
    result = evaluation_totals(landing_root, database, model_server, CostSettings(config_file=str(budgets)))
    rows = {
        r[0]: r[1:]
        for r in fetch(
            database,
            "SELECT evaluation_id, total_cost_usd, turns, cost_per_turn_usd, first_day, last_day, "
            "budget_used_share FROM evaluation_costs",
        )
    }
    assert {k: v[0] for k, v in rows.items()} == per_eval
    assert sum(v[0] for v in rows.values()) == total
    turns = dict(fetch(database, "SELECT evaluation_id, count(*) FROM cleaned_turns GROUP BY 1"))
    assert all(
        rows[e][1] == turns[e] and rows[e][2] == (rows[e][0] / turns[e]).quantize(Decimal("1e-12")) for e in rows
    )
    assert all((v[3], v[4]) == (DAYS[0], DAYS[-1]) for v in rows.values())
    assert check_results(result) == {"budgets_held": (False, dg.AssetCheckSeverity.WARN)}
    metadata = result.asset_materializations_for_node("evaluation_costs")[0].metadata
    assert metadata["evaluations"].value == len(per_eval) and metadata["all_under_budget"].value is True

    budgets.write_text(f'[budgets]\n"{biggest}" = "{per_eval[biggest] / 2}"\n')
    over = evaluation_totals(landing_root, database, model_server, CostSettings(config_file=str(budgets)))
    assert check_results(over) == {"budgets_held": (False, dg.AssetCheckSeverity.ERROR)}


def run_checks(landing_root, database, model_server, day=DAYS[0]) -> dict:
    """Only the daily checks, for one partition, against whatever the tables now hold."""
    daily_checks = [c for c in all_checks if all(k.asset_key != dg.AssetKey("evaluation_costs") for k in c.check_keys)]
    job = dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        resources=local_resources(landing_root, database, model_server, costs=SMALL_DAYS_COSTS),
        jobs=[dg.define_asset_job("daily_checks", selection=dg.AssetSelection.checks(*daily_checks))],
    ).resolve_job_def("daily_checks")
    # A checks-only selection has no assets to derive partitions from; the run's partition tag carries the day.
    return check_results(job.execute_in_process(tags={"dagster/partition": str(day)}, raise_on_error=False))


RECONCILE = "rollup_reconciles_with_calls"


@pytest.mark.parametrize(
    "tamper,failing",
    [
        ("UPDATE daily_cost_rollup SET total_cost_usd = total_cost_usd + 0.000000000001 WHERE rowid = 0", {RECONCILE}),
        ("UPDATE llm_calls SET usage_source = NULL WHERE rowid = 0", {"calls_have_usage"}),
        # A changed call cost also unbalances the rollup built from the old one: both must say so.
        (
            "UPDATE llm_calls SET output_cost_usd = -output_cost_usd WHERE output_cost_usd > 0 AND rowid < 3",
            {"costs_are_valid", RECONCILE},
        ),
        ("UPDATE llm_calls SET input_cost_usd = NULL WHERE rowid = 1", {"costs_are_valid", RECONCILE}),
        ("UPDATE function_calls SET run_id = 'another-run' WHERE rowid = 0", {"batch_from_one_run"}),
    ],
)
def test_each_check_fails_on_the_damage_it_guards_against(
    three_days, landing_root, database, model_server, tamper, failing
):
    assert all(passed for passed, _ in run_checks(landing_root, database, model_server).values())
    with duckdb.connect(str(database)) as connection:
        connection.execute(tamper + f" AND partition_date = '{DAYS[0]}'")
    results = run_checks(landing_root, database, model_server)
    assert {name for name, (passed, _) in results.items() if not passed} == failing
    assert all(results[name][1] == dg.AssetCheckSeverity.ERROR for name in failing)


def test_estimated_usage_above_the_threshold_warns(landing_root, database, model_server):
    generate(landing_root, DAYS[0], days=1, turns_per_day=40, seed=3)
    model_server.configure(rate_missing_usage=0.5, seed=2)
    results = check_results(materialize_day(DAYS[0], landing_root, database, model_server))
    assert results["calls_have_usage"] == (False, dg.AssetCheckSeverity.WARN)
    assert results["rollup_reconciles_with_calls"][0]


def test_a_model_without_a_price_is_flagged_never_free(landing_root, database, model_server):
    generate(landing_root, DAYS[0], days=1, turns_per_day=40, seed=3)
    result = materialize_day(
        DAYS[0], landing_root, database, model_server, gemini={"models": {"function_model": "gemini-9-ultra"}}
    )
    assert check_results(result)["prices_are_known"] == (False, dg.AssetCheckSeverity.WARN)
    assert check_results(result)["costs_are_valid"] == (True, dg.AssetCheckSeverity.ERROR)
    rows = fetch(
        database,
        "SELECT DISTINCT price_status, total_cost_usd IS NULL FROM llm_calls WHERE model = 'gemini-9-ultra' "
        "AND NOT cache_hit",
    )
    assert rows == [("missing", True)]
    assert fetch(database, "SELECT sum(missing_price_calls) > 0 FROM daily_cost_rollup") == [(True,)]


def test_a_failing_blocking_check_stops_the_rollup(landing_root, database, model_server, monkeypatch):
    generate(landing_root, DAYS[0], days=1, turns_per_day=30, seed=3)
    real = PriceBook._price

    def negative(self, model, tokens, at, *processing):
        cost = real(self, model, tokens, at, *processing)
        return (
            cost
            if cost.output_cost is None
            else type(cost)(
                cost.input_cost,
                cost.cached_input_cost,
                -cost.output_cost,
                cost.total_cost,
                cost.price_source,
                cost.price_status,
            )
        )

    monkeypatch.setattr(PriceBook, "_price", negative)
    # The fault is in this process's price book: the step prices here, without its writer process.
    monkeypatch.setattr(WriterProcess, "start", classmethod(lambda cls, *args: None))
    result = materialize_day(DAYS[0], landing_root, database, model_server, raise_on_error=False)
    assert check_results(result)["costs_are_valid"][0] is False
    assert not result.asset_materializations_for_node("daily_cost_rollup")
    assert fetch(database, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'daily_cost_rollup'") == [
        (0,)
    ]


def test_the_schedule_runs_yesterdays_partition_once_its_files_have_landed(landing_root):
    landing = LandingResource(root=str(landing_root))
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 5, 2, tzinfo=timezone.utc), resources={"landing": landing}
    )
    skip = daily_pipeline_schedule(context)
    assert isinstance(skip, dg.SkipReason)
    assert (
        skip.skip_message.startswith("No landing files for 2026-11-04") and "late_landing_sensor" in skip.skip_message
    )
    generate(landing_root, date(2026, 11, 4), days=1, turns_per_day=10, seed=1)
    request = daily_pipeline_schedule(context)
    assert (request.partition_key, request.run_key) == ("2026-11-04", "2026-11-04")


def test_the_sensor_picks_up_a_landing_folder_that_arrives_late(landing_root, database, model_server):
    resources = local_resources(landing_root, database, model_server)
    with dg.instance_for_test() as instance:

        def evaluate():
            context = dg.build_sensor_context(instance=instance, resources={"landing": resources["landing"]})
            return [r.partition_key for r in late_landing_sensor(context).run_requests]

        assert evaluate() == []
        generate(landing_root, DAYS[1], days=1, turns_per_day=20, seed=1)
        assert evaluate() == [str(DAYS[1])]
        materialize_day(DAYS[1], landing_root, database, instance=instance)
        assert evaluate() == []
        future = datetime.now().timestamp() + 5
        for path in (landing_root / str(DAYS[1])).glob("*.jsonl"):
            os.utime(path, (future, future))
        assert evaluate() == [str(DAYS[1])]


def test_totals_are_requested_once_a_rollup_changes(three_days, landing_root, database, model_server):
    defs = dg.Definitions(
        assets=all_assets, asset_checks=all_checks, resources=local_resources(landing_root, database, model_server)
    )
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0, "nothing has changed yet on this instance"
        materialize_day(DAYS[0], landing_root, database, model_server, instance=instance)
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert after.get_requested_partitions(dg.AssetKey("evaluation_costs")) == {None}


def test_totals_that_leave_out_unpriced_calls_say_so_and_no_budget_passes_on_them(
    landing_root, database, model_server, tmp_path
):
    generate(landing_root, DAYS[0], days=1, turns_per_day=40, seed=3)
    materialize_day(
        DAYS[0], landing_root, database, model_server, gemini={"models": {"function_model": "gemini-9-ultra"}}
    )
    budgets = tmp_path / "costs.toml"
    budgets.write_text('[budgets]\ndefault = "1000"\n')
    result = evaluation_totals(landing_root, database, model_server, CostSettings(config_file=str(budgets)))
    unpriced = fetch(
        database, "SELECT evaluation_id, unpriced_calls, complete FROM evaluation_costs WHERE unpriced_calls > 0"
    )
    assert unpriced and all(not complete for _, _, complete in unpriced)
    (evaluation,) = result.get_asset_check_evaluations()
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert (
        "cannot hold budgets on incomplete totals" in evaluation.description
        and "calls without a price" in evaluation.description
    )
    metadata = result.asset_materializations_for_node("evaluation_costs")[0].metadata
    assert metadata["totals"].value.startswith("incomplete: leaves out") and metadata["all_under_budget"].value is False
    from cost_pipeline.reports.report import cost_report, render

    table = render(cost_report(str(database), DAYS[0], DAYS[0], "model"), "table")
    missing = fetch(database, "SELECT sum(missing_price_calls + unpriced_attempts) FROM daily_cost_rollup")[0][0]
    assert (
        table.splitlines()[-1]
        == f"TOTAL is incomplete: leaves out {missing:,} calls without a price: it is a lower bound"
    )
    assert json.loads(render(cost_report(str(database), DAYS[0], DAYS[0], "day"), "json"))["total"]["complete"] is False


def test_quarantine_and_failed_turn_shares_warn_with_the_numbers(landing_root, database, model_server):
    generate(landing_root, DAYS[0], days=1, turns_per_day=200, seed=4)
    model_server.configure(rate_400=0.03, seed=3)  # a 400 is never retried: its turn fails
    result = materialize_day(
        DAYS[0], landing_root, database, model_server, costs=CostSettings(failed_turn_share_warn=0.002)
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = evaluations["failed_turn_share"]
    assert (failed.passed, failed.severity) == (False, dg.AssetCheckSeverity.WARN)
    turns, bad = fetch(database, "SELECT count(*), count(*) FILTER (WHERE status <> 'ok') FROM cleaned_turns")[0]
    assert bad and failed.description.startswith(
        f"{bad / turns:.1%} of turns failed cleaning ({bad} of {turns}; warn above 0.2%)"
    )
    quarantine = evaluations["quarantine_share"]
    assert quarantine.passed  # one malformed line of each kind in 200 turns stays under 5%

    small_day = DAYS[1]
    generate(landing_root, small_day, days=1, turns_per_day=10, seed=4)
    model_server.configure(rate_400=0.0)
    quarantined = {
        e.check_name: e
        for e in materialize_day(small_day, landing_root, database, model_server).get_asset_check_evaluations()
    }["quarantine_share"]
    lines, landed = fetch(
        database,
        f"SELECT (SELECT count(*) FROM quarantined_turns WHERE partition_date = '{small_day}'), "
        f"(SELECT count(*) FROM raw_turns WHERE partition_date = '{small_day}')",
    )[0]
    assert (quarantined.passed, quarantined.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert quarantined.description.startswith(
        f"{lines / (lines + landed):.1%} of landed lines quarantined ({lines} of {lines + landed}; warn above 5%): "
    )
    assert "not_json" in quarantined.description
