"""The forecast: before any call, what days will cost; then the days run and the ledger says whether it was right."""

import json
import math
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.cli import main
from cost_pipeline.gemini.settings import ModelSettings
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.money.forecast import (
    NO_HISTORY_SYSTEMATIC,
    CachedAnswers,
    Calibration,
    Forecaster,
    ForecastSettings,
    Line,
    StageCalibration,
    TrafficProfile,
    day_error,
    forecast_days,
    landed_turns,
    render_table,
)
from cost_pipeline.money.pricing import PriceBook

from .conftest import SMALL_DAYS_COSTS, THREE_DAYS, materialize_day

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
        assert predicted.reasons == [], "days like the calibration's keep its interval"


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
    from cost_pipeline.cli import _forecast_tags, _print_forecast

    generate(tmp_path / "landing", UNSEEN[0], days=1, turns_per_day=20, seed=4)
    monkeypatch.setenv("COST_PIPELINE_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("COST_PIPELINE_DB", str(tmp_path / "none.duckdb"))
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")  # nothing listens: countTokens fails
    monkeypatch.setenv("GEMINI_API_KEY", "secret-key-that-must-not-show")
    assert _forecast_tags(_print_forecast([UNSEEN[0]])) == {}
    error = capsys.readouterr().err
    assert error.startswith("Forecast unavailable (") and "launching without it" in error
    assert "secret-key-that-must-not-show" not in error


FIELD_EVALUATION = "eval-field-users"


def land_field_day(landing_root: Path, day: date, turns: int, seed: int) -> None:
    """Traffic unlike the generator's: each turn says three of its turns at once, in 12-turn conversations, under an
    evaluation the generator never uses."""
    scratch = landing_root.parent / "scratch"
    generate(scratch, day, days=1, turns_per_day=3 * turns, seed=seed)
    said = landed_turns(scratch, day, 20_000) or []
    by_speaker = {speaker: [turn.text for turn in said if turn.speaker == speaker] for speaker in ("User", "Assistant")}
    lines = []
    for position in range(turns):
        index, speaker = position % 12, ("User", "Assistant")[position % 2]
        texts = by_speaker[speaker][3 * (position // 2) : 3 * (position // 2) + 3]
        record = {
            "evaluation_id": FIELD_EVALUATION,
            "conversation_id": f"field-{day:%Y%m%d}-{position // 12:04d}",
            "turn_index": index,
            "speaker": speaker,
            "text": " ".join(text.rstrip(".?!") + "." for text in texts),
            "created_at": f"{day.isoformat()}T12:00:00Z",
        }
        lines.append(json.dumps(record))
    folder = landing_root / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{FIELD_EVALUATION}.jsonl").write_text("\n".join(lines) + "\n")


def _profile(turns: int, chars_per_turn: float, turns_per_conversation: float, evaluations: set[str]) -> TrafficProfile:
    """A profile of `turns` turns, half of them user turns, all `chars_per_turn` long."""
    chars = turns * chars_per_turn
    return TrafficProfile(
        turns, round(turns / turns_per_conversation), turns // 2, chars, chars * chars_per_turn, frozenset(evaluations)
    )


def _fitted(systematic: float = 0.06) -> Calibration:
    fitted = StageCalibration(Line(0, 1), Line(0, 1), Line(0, 0), 0.0, 1.0, 500, "the ledger (500 calls)")
    days = {date(2026, 11, 1): _profile(300, 50, 6, {"eval-a"}), date(2026, 11, 2): _profile(300, 55, 6.5, {"eval-a"})}
    return Calibration({("clean", "lite"): fitted}, systematic, history_days=2, profiles=days)


@pytest.mark.parametrize(
    ("day", "usd_by_part", "expected", "reasons"),
    [
        (_profile(300, 53, 6.2, {"eval-a"}), {("eval-a", "clean", "lite"): Decimal(1)}, 0.06, []),
        (  # within SAME_KIND (1.25x) of the calibration: the same kind, however the days drew it
            _profile(300, 64, 7.5, {"eval-a"}),
            {("eval-a", "clean", "lite"): Decimal(1)},
            0.06,
            [],
        ),
        (  # text 2x longer than the longest calibration day: ln 2 - ln 1.25 beyond, in quadrature with 0.06
            _profile(300, 110, 6.2, {"eval-a"}),
            {("eval-a", "clean", "lite"): Decimal(1)},
            math.hypot(0.06, math.log(2) - math.log(1.25)),
            ["text 2.0x longer than calibration (110 vs 50 to 55 characters a turn)"],
        ),
        (  # an evaluation never seen: the no-history width for its quarter of the spend
            _profile(300, 53, 6.2, {"eval-a", "eval-new"}),
            {("eval-a", "clean", "lite"): Decimal(3), ("eval-new", "clean", "lite"): Decimal(1)},
            0.75 * 0.06 + 0.25 * NO_HISTORY_SYSTEMATIC,
            ["evaluation eval-new never seen in calibration (25% of the forecast)"],
        ),
        (  # a model with no ledger of its own borrows the stage's lines, at the no-history width
            _profile(300, 53, 6.2, {"eval-a"}),
            {("eval-a", "clean", "lite"): Decimal(1), ("eval-a", "clean", "flash"): Decimal(1)},
            0.5 * 0.06 + 0.5 * NO_HISTORY_SYSTEMATIC,
            ["no calibration for clean on flash: the ledger (500 calls), borrowed for flash (50% of the forecast)"],
        ),
    ],
    ids=["same-kind", "day-to-day-chance", "text-2x-longer", "evaluation-never-seen", "model-never-calibrated"],
)
def test_the_interval_widens_only_for_a_named_difference_from_the_calibration(day, usd_by_part, expected, reasons):
    error, said = day_error(_fitted(), day, usd_by_part)
    assert (round(error, 4), said) == (round(expected, 4), reasons)


def test_a_shift_is_capped_at_the_no_history_width_and_no_history_says_so():
    far = _profile(300, 5_000, 30, {"eval-a"})
    error, reasons = day_error(_fitted(), far, {("eval-a", "clean", "lite"): Decimal(1)})
    assert round(error, 6) == round((0.06**2 + NO_HISTORY_SYSTEMATIC**2) ** 0.5, 6) and len(reasons) == 2
    assert reasons[1] == "conversations 4.6x longer than calibration (30.0 vs 6.0 to 6.5 turns)"
    assert day_error(Calibration(), far, {}) == (
        NO_HISTORY_SYSTEMATIC,
        ["no history in the ledger: rough defaults (the interval is wide)"],
    )


@pytest.mark.slow
def test_traffic_unlike_the_calibration_widens_the_interval_enough_and_says_why(
    three_days, landing_root, database, model_server
):
    """Calibrated on generated days; forecast a day of them and a day of another kind; both run for real."""
    same_kind, other_kind = date(2026, 11, 4), date(2026, 11, 5)
    generate(landing_root, same_kind, days=1, turns_per_day=150, seed=17)
    land_field_day(landing_root, other_kind, turns=180, seed=18)
    models = ModelSettings(function_model="gemini-2.5-flash")  # as the three days were run
    forecast = forecast_days(
        database, landing_root, [same_kind, other_kind], ForecastSettings(models, model_server.url), PriceBook()
    )
    for day in (same_kind, other_kind):
        assert materialize_day(
            day,
            landing_root,
            database,
            model_server,
            gemini={"models": {"function_model": "gemini-2.5-flash"}},
            costs=SMALL_DAYS_COSTS,
        ).success
    with duckdb.connect(str(database), read_only=True) as connection:
        spent = dict(
            connection.execute(
                "SELECT partition_date, sum(cost_usd) FROM llm_attempts WHERE partition_date IN (?, ?) GROUP BY 1",
                [same_kind, other_kind],
            ).fetchall()
        )
    calibrated = forecast.calibration.systematic
    same, other = forecast.days
    report = []
    for predicted in forecast.days:
        low, high = predicted.bounds()
        old_low, old_high = replace(predicted, systematic=calibrated).bounds()
        report.append(
            f"{predicted.day}: spent {spent[predicted.day]:.6f}, forecast {predicted.forecast_usd:.6f} "
            f"({float(predicted.forecast_usd / spent[predicted.day] - 1):+.1%}), "
            f"interval [{low:.6f}, {high:.6f}] (+-{float(high / predicted.forecast_usd - 1):.1%}), "
            f"calibration's own [{old_low:.6f}, {old_high:.6f}]; {predicted.reasons}"
        )
    print("\n".join(report))
    for predicted in forecast.days:
        low, high = predicted.bounds()
        assert low <= spent[predicted.day] <= high, report
    assert same.reasons == [] and same.systematic == calibrated, report
    half_width = {day.day: day.bounds()[1] / day.forecast_usd - 1 for day in forecast.days}
    assert half_width[other_kind] > 2 * half_width[same_kind], report
    said = " ".join(other.reasons)
    assert "text " in said and "x longer than calibration" in said, report
    assert "conversations " in said and f"evaluation {FIELD_EVALUATION} never seen in calibration (100%" in said, report
    assert other.as_dict()["reasons"] == other.reasons and f"interval widened: {other.reasons[0]}" in render_table(
        forecast
    )
    assert THREE_DAYS[0] in forecast.calibration.profiles


def test_what_if_prices_a_service_tier_and_never_falls_back_to_standard(three_days, database):
    from cost_pipeline.money.what_if import what_if

    start, end = THREE_DAYS[0], THREE_DAYS[-1]
    (standard,) = what_if(str(database), start, end, ["gemini-4-argon"], "standard", PriceBook())[0][1:]
    (flex,) = what_if(str(database), start, end, ["gemini-4-argon"], "flex", PriceBook())[0][1:]
    (priority,) = what_if(str(database), start, end, ["gemini-4-argon"], "priority", PriceBook())[0][1:]
    assert flex.name == "same token counts, priced as gemini-4-argon, flex tier"
    assert flex.usd < standard.usd < priority.usd  # genai-prices' flex and priority rates
    (lite_flex,) = what_if(str(database), start, end, ["gemini-2.5-flash-lite"], "flex", PriceBook())[0][1:]
    assert lite_flex.usd is None and lite_flex.unpriced_attempts == lite_flex.attempts > 0  # never standard
