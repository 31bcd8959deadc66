"""The forecast: before any call, what days will cost; then the days run and the ledger says whether it was right."""

import json
from datetime import date
from decimal import Decimal

import duckdb
import pytest

from cost_pipeline.cli import main
from cost_pipeline.gemini.settings import ModelSettings
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.forecast import (
    CachedAnswers,
    Calibration,
    Forecaster,
    ForecastSettings,
    Line,
    forecast_days,
    landed_turns,
)
from cost_pipeline.money.pricing import PriceBook

from .conftest import SMALL_DAYS_COSTS, materialize_day

HISTORY = [date(2026, 11, 1), date(2026, 11, 2)]
UNSEEN = [date(2026, 11, 3), date(2026, 11, 4)]


def test_a_line_fits_exact_points_and_reports_their_scatter():
    line = Line.fit([1, 2, 3, 4], [12, 14, 16, 18])
    assert (round(line.intercept, 9), round(line.slope, 9), round(line.scatter, 9)) == (10, 2, 0)
    noisy = Line.fit([1, 2, 3, 4], [11, 15, 15, 19])
    assert noisy.scatter > 0 and noisy.at(-100) == 0  # never negative tokens


def test_repeats_are_paid_once_and_a_day_that_never_landed_says_so(tmp_path):
    generate(tmp_path / "landing", UNSEEN[0], days=1, turns_per_day=200, seed=5)
    turns = landed_turns(tmp_path / "landing", UNSEEN[0], 20_000)
    settings = ForecastSettings(ModelSettings(), "local-server")
    forecaster = Forecaster(settings, Calibration(), PriceBook())
    first = forecaster.day(UNSEEN[0], turns, CachedAnswers.empty())
    users = sum(turn.speaker == "User" for turn in turns)
    assert first.turns == len(turns) and first.calls == len(turns) + users
    # About 30% of user texts repeat: their function decisions are paid once, and opening turns with the same text too.
    assert 0.1 * users < first.cache_hits < 0.6 * users
    assert first.forecast_usd > 0 and first.bounds()[0] < first.forecast_usd < first.bounds()[1]
    # Forecast again in the same session: every request was already counted, so nothing more is paid.
    again = forecaster.day(UNSEEN[0], turns, CachedAnswers.empty())
    assert (again.cache_hits, again.forecast_usd) == (again.calls, Decimal(0))
    assert landed_turns(tmp_path / "landing", UNSEEN[1], 20_000) is None


@pytest.mark.slow
def test_on_days_never_seen_the_spend_falls_in_the_interval_and_within_15_percent(
    tmp_path, landing_root, database, model_server, capsys
):
    generate(landing_root, HISTORY[0], days=2, turns_per_day=300, seed=41)
    for day in HISTORY:
        assert materialize_day(day, landing_root, database, model_server, costs=SMALL_DAYS_COSTS).success
    generate(landing_root, UNSEEN[0], days=2, turns_per_day=300, seed=42)
    requests_before = model_server.stats().get("requests", 0)

    settings = ForecastSettings(ModelSettings(), model_server.url)
    forecast = forecast_days(database, landing_root, UNSEEN, settings, PriceBook())
    assert model_server.stats().get("requests", 0) == requests_before, "a forecast makes no API call"
    assert "the ledger:" in forecast.calibration.describe()

    for day in UNSEEN:
        assert materialize_day(day, landing_root, database, model_server, costs=SMALL_DAYS_COSTS).success
    with duckdb.connect(str(database), read_only=True) as connection:
        actual = dict(
            connection.execute(
                "SELECT partition_date, sum(cost_usd) FROM llm_attempts WHERE partition_date IN (?, ?) GROUP BY 1",
                UNSEEN,
            ).fetchall()
        )
        hits = dict(
            connection.execute(
                "SELECT partition_date, count(*) FILTER (WHERE cache_hit) FROM llm_calls "
                "WHERE partition_date IN (?, ?) GROUP BY 1",
                UNSEEN,
            ).fetchall()
        )
    report = []
    for predicted in forecast.days:
        low, high = predicted.bounds()
        spent = actual[predicted.day]
        report.append(
            f"{predicted.day}: forecast {predicted.forecast_usd:.6f} [{low:.6f}, {high:.6f}], "
            f"spent {spent:.6f} ({float(predicted.forecast_usd / spent - 1):+.1%}); "
            f"cache hits {predicted.cache_hits} forecast, {hits[predicted.day]} actual"
        )
    print("\n".join(report))
    for predicted in forecast.days:
        low, high = predicted.bounds()
        spent = actual[predicted.day]
        assert low <= spent <= high, report
        assert abs(predicted.forecast_usd - spent) <= Decimal("0.15") * spent, report


def test_the_cli_prints_json_with_the_figures_per_day_and_in_total(tmp_path, capsys, monkeypatch):
    generate(tmp_path / "landing", UNSEEN[0], days=1, turns_per_day=60, seed=3)
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert (
        main(
            [
                "forecast",
                "--from",
                str(UNSEEN[0]),
                "--to",
                str(UNSEEN[1]),
                "--format",
                "json",
                "--landing",
                str(tmp_path / "landing"),
                "--database",
                str(tmp_path / "none.duckdb"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    keys = {"forecast_usd", "low_usd", "high_usd", "calls", "cache_hits"}
    assert keys <= set(printed["total"]) and all(keys <= set(day) for day in printed["days"])
    assert [day["landed"] for day in printed["days"]] == [True, False] and printed["complete"] is False
    assert Decimal(printed["total"]["forecast_usd"]) == Decimal(printed["days"][0]["forecast_usd"]) > 0
    assert printed["calibration"].startswith("defaults")


def test_what_if_reprices_the_billed_tokens_on_other_models_and_at_batch_rates(three_days, database, capsys):
    """The same token counts on another price list: batch halves input and output (cache reads stay standard)."""
    from cost_pipeline.money.pricing import PriceBook
    from cost_pipeline.money.what_if import ACTUAL, what_if

    start, end = date(2026, 11, 1), date(2026, 11, 3)
    scenarios, unknown = what_if(str(database), start, end, [], "batch", PriceBook())
    actual, at_batch = scenarios  # the fixture's days used flash-lite (clean) and flash (function): each on its own
    with duckdb.connect(str(database), read_only=True) as connection:
        (billed,) = connection.execute("SELECT sum(cost_usd) FROM llm_attempts").fetchone()
    assert actual.name == ACTUAL and actual.usd == billed and unknown == 0
    assert at_batch.name == "same token counts, priced as the models used, batch processing"
    assert Decimal("0.5") <= at_batch.usd / actual.usd <= Decimal("0.55")
    (standard_lite,) = what_if(str(database), start, end, ["gemini-2.5-flash-lite"], "standard", PriceBook())[0][1:]
    (batch_only_lite,) = what_if(str(database), start, end, ["gemini-2.5-flash-lite"], "batch", PriceBook())[0][1:]
    assert Decimal("0.5") <= batch_only_lite.usd / standard_lite.usd <= Decimal("0.55")
    assert (
        main(
            [
                "report",
                "--start",
                str(start),
                "--end",
                str(end),
                "--database",
                str(database),
                "--what-if",
                "gemini-2.5-pro",
                "--processing",
                "batch",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "same token counts on another price list" in printed and "gemini-2.5-pro, batch processing" in printed


def test_with_a_key_a_sample_is_counted_by_count_tokens_and_nothing_is_generated(
    tmp_path, capsys, monkeypatch, model_server
):
    generate(tmp_path / "landing", UNSEEN[0], days=1, turns_per_day=60, seed=3)
    arguments = [
        "forecast",
        "--from",
        str(UNSEEN[0]),
        "--to",
        str(UNSEEN[0]),
        "--format",
        "json",
        "--landing",
        str(tmp_path / "landing"),
        "--database",
        str(tmp_path / "none.duckdb"),
    ]
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", model_server.url)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    assert main(arguments) == 0
    without_key = json.loads(capsys.readouterr().out)
    assert model_server.stats().get("count_tokens", 0) == 0 and "countTokens" not in without_key["calibration"]

    monkeypatch.setenv("GEMINI_API_KEY", "test-key-for-count-tokens")
    assert main(arguments) == 0
    with_key = json.loads(capsys.readouterr().out)
    stats = model_server.stats()
    assert stats["count_tokens"] == 20 and stats.get("requests", 0) == 0  # counted, nothing generated or billed
    assert "countTokens on 20 sample requests" in with_key["calibration"]
    # The local model's tokens are smaller than four characters: its count moves the rough default forecast up.
    assert Decimal(with_key["total"]["forecast_usd"]) > Decimal(without_key["total"]["forecast_usd"])


def test_a_forecast_that_cannot_be_made_never_stops_a_run_nor_shows_the_key(tmp_path, capsys, monkeypatch):
    from cost_pipeline.cli import _forecast_tags

    generate(tmp_path / "landing", UNSEEN[0], days=1, turns_per_day=20, seed=4)
    monkeypatch.setenv("COST_PIPELINE_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("COST_PIPELINE_DB", str(tmp_path / "none.duckdb"))
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")  # nothing listens: countTokens fails
    monkeypatch.setenv("GEMINI_API_KEY", "secret-key-that-must-not-show")
    assert _forecast_tags([UNSEEN[0]]) == {}
    error = capsys.readouterr().err
    assert error.startswith("Forecast unavailable (") and "launching without it" in error
    assert "secret-key-that-must-not-show" not in error
