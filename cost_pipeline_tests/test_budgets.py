"""Hard spend limits: per run, per day and per evaluation; the spend never passes a limit by more than one call, the
rest is skipped with reason budget, the run fails saying so, and a re-run after raising the limit finishes the day
without paying for anything twice. The ledger equals the server's own billing record throughout."""

from datetime import date
from decimal import Decimal

import duckdb
import pytest

from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.budgets import WAIT, Budget, Limits, Spent

from .conftest import materialize_command, materialize_day
from .test_ledger import ledger_bill, server_bill

DAY = date(2026, 11, 5)


def test_limits_parse_exact_amounts_and_refuse_what_is_not_one():
    limits = Limits.from_table(
        {"run": "0.5", "day": 2, "evaluation_month": {"default": "5"}, "evaluation": {"eval-a": "20.00"}}
    )
    assert (limits.run, limits.day) == (Decimal("0.5"), Decimal("2"))
    assert limits.for_evaluation("evaluation_month", "eval-b") == Decimal(5)
    assert limits.for_evaluation("evaluation", "eval-b") is None and bool(limits) and not Limits()
    for bad in ({"run": "lots"}, {"run": "-1"}, {"weekly": "1"}, {"evaluation": "1"}):
        with pytest.raises(ValueError, match=r"\[limits"):
            Limits.from_table(bad)


def test_a_budget_reserves_settles_and_stops_only_what_a_limit_covers():
    spent = Spent(day=Decimal("0.9"), evaluation_month={"eval-a": Decimal("0.45")}, evaluation={"eval-a": Decimal("3")})
    budget = Budget(
        Limits(day=Decimal("1.0"), evaluation_month={"eval-a": Decimal("0.5")}), spent, "2026-11-05", "2026-11"
    )
    first = budget.reserve("eval-b", Decimal("0.04"))
    # 0.9 + 0.04 held + 0.07 > 1.0, but 0.9 + 0.07 fits: wait for the attempt in flight to settle.
    assert first is not None and budget.reserve("eval-b", Decimal("0.07")) == WAIT and not budget.blocks("eval-a")
    budget.settle(first, Decimal("0.03"))
    assert budget.day_spent == Decimal("0.93") and budget.reserved == 0
    second = budget.reserve("eval-b", Decimal("0.07"))  # 0.93 + 0.07 = 1.0: exactly at the limit
    assert second is not None and budget.reserve("eval-b", Decimal("0.01")) is WAIT
    budget.settle(second, Decimal("0.07"))
    assert budget.reserve("eval-b", Decimal("0.01")) is None  # nothing in flight: over, and every call stops
    assert budget.blocks("eval-a") and "the day limit for 2026-11-05 is $1.0" in budget.exhausted

    monthly = Budget(Limits(evaluation_month={"eval-a": Decimal("0.5")}), spent, "2026-11-05", "2026-11")
    assert monthly.reserve("eval-a", Decimal("0.06")) is None  # 0.45 this month + 0.06 > 0.5
    assert monthly.blocks("eval-a") and not monthly.blocks("eval-b")
    assert monthly.reserve("eval-b", Decimal("0.06")) is not None
    unknown = monthly.reserve("eval-b", Decimal("0.02"))
    monthly.settle(unknown, None)  # billing unknown: the reservation counts as spent
    assert monthly.run_spent == Decimal("0.02") and "monthly limit of eval-a for 2026-11" in monthly.failure()


def test_reservations_grow_with_the_worst_overrun_seen_never_compounded():
    """Attempts that each cost 10% over their forecast scale later reservations by 1.1, however many were in flight."""
    budget = Budget(Limits(run=Decimal("10")), Spent(), "2026-11-05", "2026-11")
    held = [budget.reserve("eval-a", Decimal("0.001")) for _ in range(64)]
    for reservation in held:
        budget.settle(reservation, Decimal("0.0011"))
    assert budget.scale == Decimal("1.1")
    assert budget.reserve("eval-a", Decimal("0.001")).amount == Decimal("0.0011")


def _costs(tmp_path, name: str, limits: str) -> CostSettings:
    path = tmp_path / f"{name}.toml"
    path.write_text(limits)
    return CostSettings(config_file=str(path), quarantine_share_warn=0.2)


def _ledger(database) -> dict:
    with duckdb.connect(str(database), read_only=True) as connection:
        spend = connection.execute(
            "SELECT run_id, sum(cost_usd), max(cost_usd) FROM llm_attempts GROUP BY 1"
        ).fetchall()
        by_evaluation = dict(
            connection.execute("SELECT evaluation_id, sum(cost_usd) FROM llm_attempts GROUP BY 1").fetchall()
        )
        paid_twice = connection.execute(
            "SELECT count(*) FROM (SELECT request_hash FROM llm_attempts WHERE outcome = 'accepted' "
            "GROUP BY 1 HAVING count(*) > 1)"
        ).fetchone()[0]
        statuses = dict(connection.execute("SELECT status, count(*) FROM cleaned_turns GROUP BY 1").fetchall())
        skipped = connection.execute(
            "SELECT count(*) FILTER (WHERE error = 'budget'), count(*) FROM cleaned_turns WHERE status = 'skipped'"
        ).fetchone()
        biggest_call = connection.execute("SELECT max(total_cost_usd) FROM llm_calls").fetchone()[0]
    return {
        "runs": {run: (total, largest) for run, total, largest in spend},
        "by_evaluation": by_evaluation,
        "paid_twice": paid_twice,
        "statuses": statuses,
        "skipped": skipped,
        "biggest_call": biggest_call,
        "total": sum(total for _, total, _ in spend),
    }


@pytest.mark.slow
def test_a_run_limit_stops_the_day_and_a_rerun_after_raising_it_pays_nothing_twice(
    tmp_path, landing_root, database, model_server
):
    generate(landing_root, DAY, days=1, turns_per_day=200, seed=61)
    # What the whole day costs, measured on a separate store.
    assert materialize_day(
        DAY, landing_root, tmp_path / "measure.duckdb", model_server, costs=_costs(tmp_path, "none", "")
    ).success
    whole_day = _ledger(tmp_path / "measure.duckdb")["total"]
    model_server.reset()

    limit = (whole_day * Decimal("0.4")).quantize(Decimal("0.000001"))
    stopped = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        raise_on_error=False,
        costs=_costs(tmp_path, "run", f'[limits]\nrun = "{limit}"\n'),
    )
    assert not stopped.success
    (failure,) = [e for e in stopped.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(f"Budget reached: the run limit is ${limit}") and "calls skipped:" in description
    first = _ledger(database)
    ((run_spent, _),) = first["runs"].values()
    print(
        f"run limit ${limit}: spent ${run_spent:.6f} ({run_spent / limit:.1%}), "
        f"the largest call ${first['biggest_call']:.6f}; "
        f"skipped {first['skipped'][0]} turns"
    )
    assert run_spent <= limit + first["biggest_call"], (run_spent, limit)
    assert run_spent > limit * Decimal("0.8")  # it stopped near the limit, not long before
    assert first["skipped"][0] == first["skipped"][1] > 0 and first["statuses"]["ok"] > 0
    assert ledger_bill(database) == server_bill(model_server)

    finished = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        costs=_costs(tmp_path, "raised", f'[limits]\nrun = "{whole_day * 2}"\n'),
    )
    assert finished.success
    after = _ledger(database)
    assert after["statuses"] == {"ok": 200} and after["paid_twice"] == 0
    assert ledger_bill(database) == server_bill(model_server)
    # Both runs together paid about what one uninterrupted run pays: nothing twice.
    assert after["total"] <= whole_day * Decimal("1.02")


@pytest.mark.slow
def test_a_day_limit_counts_every_run_of_the_day_and_an_evaluation_limit_stops_only_that_evaluation(
    tmp_path, landing_root, database, model_server
):
    generate(landing_root, DAY, days=1, turns_per_day=200, seed=62)
    assert materialize_day(
        DAY, landing_root, tmp_path / "measure.duckdb", model_server, costs=_costs(tmp_path, "none", "")
    ).success
    measured = _ledger(tmp_path / "measure.duckdb")
    whole_day = measured["total"]
    model_server.reset()

    # Run 1 stops at 30% of the day; run 2 may spend what the day has left under 60%.
    first = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        raise_on_error=False,
        costs=_costs(tmp_path, "run", f'[limits]\nrun = "{whole_day * Decimal("0.3"):.6f}"\n'),
    )
    day_limit = (whole_day * Decimal("0.6")).quantize(Decimal("0.000001"))
    second = materialize_day(
        DAY,
        landing_root,
        database,
        model_server,
        raise_on_error=False,
        costs=_costs(tmp_path, "day", f'[limits]\nday = "{day_limit}"\n'),
    )
    assert not first.success and not second.success
    ledger = _ledger(database)
    assert len(ledger["runs"]) == 2
    print(f"day limit ${day_limit}: two runs spent ${ledger['total']:.6f} ({ledger['total'] / day_limit:.1%})")
    assert day_limit * Decimal("0.8") < ledger["total"] <= day_limit + ledger["biggest_call"]
    assert ledger_bill(database) == server_bill(model_server)

    # An evaluation's all-time limit: its calls stop, the other evaluations finish.
    capped = "eval-voice-assistant-v1"
    cap = (measured["by_evaluation"][capped] * Decimal("0.5")).quantize(Decimal("0.000001"))
    store = tmp_path / "evaluation.duckdb"
    model_server.reset()
    result = materialize_day(
        DAY,
        landing_root,
        store,
        model_server,
        raise_on_error=False,
        costs=_costs(tmp_path, "evaluation", f'[limits.evaluation]\n"{capped}" = "{cap}"\n'),
    )
    assert not result.success
    capped_ledger = _ledger(store)
    print(
        f"evaluation limit ${cap}: {capped} spent ${capped_ledger['by_evaluation'][capped]:.6f} "
        f"({capped_ledger['by_evaluation'][capped] / cap:.1%})"
    )
    assert capped_ledger["by_evaluation"][capped] <= cap + capped_ledger["biggest_call"]
    with duckdb.connect(str(store), read_only=True) as connection:
        skipped_by_evaluation = dict(
            connection.execute(
                "SELECT evaluation_id, count(*) FROM cleaned_turns WHERE status = 'skipped' GROUP BY 1"
            ).fetchall()
        )
    assert set(skipped_by_evaluation) == {capped}
    assert ledger_bill(store) == server_bill(model_server)


def test_runs_sharing_a_limit_take_turns_and_a_dead_holder_frees_its_turn(tmp_path):
    import threading
    import time

    from cost_pipeline.gemini_step.budget_turns import spending_turn, turn_scope

    assert turn_scope(Limits(run=Decimal(1)), "2026-11-05") is None
    assert turn_scope(Limits(day=Decimal(1)), "2026-11-05") == "day-2026-11-05"
    assert turn_scope(Limits(day=Decimal(1), evaluation={"default": Decimal(1)}), "2026-11-05") == "all"
    database, said, order = tmp_path / "store.duckdb", [], []

    def second():
        with spending_turn(database, "all", "run-b", said.append, poll_s=0.05) as waited:
            order.append(("b", waited))

    with spending_turn(database, "all", "run-a", said.append) as waited:
        assert waited == 0.0
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.4)
        order.append(("a", None))
    other.join(5)
    assert [who for who, _ in order] == ["a", "b"] and order[1][1] >= 0.3
    assert len(said) == 1 and "waiting for run run-a" in said[0]
    with spending_turn(database, None, "run-c", said.append) as waited:  # no shared limit: never waits
        assert waited == 0.0


@pytest.mark.slow
def test_a_backfill_of_two_days_at_once_stays_under_an_evaluation_limit(tmp_path, landing_root, database, model_server):
    """Two runs of different days at once, one evaluation limit over all days: the second run waits for the first's
    calls, then sees its spend, so together they pass the limit by at most one call (without turns: about twice)."""
    import os
    import subprocess
    from datetime import timedelta

    from .conftest import REPO, dagster_home

    days = [DAY, DAY + timedelta(days=1)]
    generate(landing_root, DAY, days=2, turns_per_day=120, seed=63)
    capped = "eval-voice-assistant-v1"
    assert materialize_day(
        DAY, landing_root, tmp_path / "measure.duckdb", model_server, costs=_costs(tmp_path, "none", "")
    ).success
    cap = (_ledger(tmp_path / "measure.duckdb")["by_evaluation"][capped] * Decimal("0.5")).quantize(Decimal("0.000001"))
    model_server.reset()
    model_server.configure(latency_ms=20)  # both runs are calling at once for seconds
    (tmp_path / "limits.toml").write_text(f'[limits.evaluation]\n"{capped}" = "{cap}"\n')
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home(tmp_path / "home")),
        "COST_PIPELINE_DB": str(database),
        "COST_PIPELINE_LANDING": str(landing_root),
        "COST_PIPELINE_COSTS": str(tmp_path / "limits.toml"),
        "GOOGLE_GEMINI_BASE_URL": model_server.url,
        "COST_PIPELINE_BILLING": str(tmp_path / "billing"),
    }
    env.pop("GEMINI_API_KEY", None), env.pop("GOOGLE_API_KEY", None)
    command = materialize_command("raw_turns,quarantined_turns,cleaned_turns,function_calls,llm_calls", "--partition")
    runs = [
        subprocess.Popen(
            [*command, str(day)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for day in days
    ]
    logs = [run.communicate(timeout=300)[0] for run in runs]
    assert any(run.returncode != 0 for run in runs)  # the limit stopped the day that came second, if not both
    assert sum("waiting for run" in log for log in logs) == 1
    spent = _ledger(database)
    print(
        f"evaluation limit ${cap} over two days at once: spent ${spent['by_evaluation'][capped]:.6f} "
        f"({spent['by_evaluation'][capped] / cap:.1%})"
    )
    assert cap * Decimal("0.8") < spent["by_evaluation"][capped] <= cap + spent["biggest_call"]
    assert ledger_bill(database) == server_bill(model_server)
