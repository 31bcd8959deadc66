"""What running days will cost, before any call: the requests the pipeline would send, their tokens and cache
hits, priced.

How. Each landed turn becomes the cleaning request the pipeline would build, with its
conversation's earlier turns as context (their cleaned text where the response cache knows
it, else their raw text), and each user turn a function request. A request is free when:
- the response cache answers it exactly (a turn whose earlier turns are cached: their
  cleaned text is then known, so the request is the one the pipeline will send);
- its raw text was cleaned before (in any context) to a text whose function decision is
  cached (the pipeline will ask exactly that again: temperature 0, the same answer);
- an identical request comes earlier in the forecast itself (the session answers repeats
  from its cache, or from the identical call in flight). Where a request depends on cleaned
  text not known yet, two requests count as identical when their texts are alike once the
  disfluencies the cleaning prompt removes are taken out (`disfluent_key`): "um, book a a
  meeting" and "book a meeting" will be cleaned alike and then asked about once.
The rest are paid. Their tokens are counted locally (characters / 4) and calibrated on the
ledger per stage and model: a least-squares line from that count to the prompt tokens Gemini
reported for requests built the same way, lines from the turn's length to output and
thinking tokens, the cached share of the prompt (implicit caching), and the billed attempts
per call (a rejected answer is paid too). They are priced with the price book (genai-prices).

The interval: the per-call scatter around the lines (calls are independent, so it grows with
the square root of their number, at 95%) plus the calibration's own error on whole days of the
history it was fitted on (a systematic part that grows with the forecast). That error only
holds for traffic like the history's, so the calibration keeps the profile of the turns it was
fitted on (`TrafficProfile`) and each day is compared with it (`day_error`): a day whose texts,
conversations or share of user turns lie outside what the history showed gets a wider
interval, and the part of its spend the history knows nothing of (evaluations never seen,
stages or models without calibration of their own) gets the no-history width. Each
widening is listed in the day's `reasons`. With no history the lines are rough defaults and
the interval is wide, and the forecast says so.

Pure: no Dagster, no API. Reads DuckDB read-only and the landing files.
"""

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

from cost_pipeline.gemini.prompts import CLEAN, FUNCTION, LlmRequest, cleaning_request, function_request
from cost_pipeline.gemini.settings import GeminiSettings, ModelSettings
from cost_pipeline.gemini.traffic import SERVED_AS
from cost_pipeline.gemini.usage import Usage, estimate_tokens
from cost_pipeline.ingest.landing import (
    DEFAULT_MAX_TEXT_CHARS,
    LandingFolderMissing,
    LandingReader,
    Turn,
    landing_folder,
)
from cost_pipeline.money.pricing import PriceBook, Tier

FORECAST_TAG = "cost_pipeline/forecast_usd"
"""The run tag carrying a day's forecast (USD) when `cost-pipeline run` or `backfill` launched it."""
Z_95 = 1.96
MIN_SYSTEMATIC = 0.06
"""The least relative error the interval allows for: cache hits the forecast cannot foresee (a turn whose earlier
turns are new) move a day's spend by a few percent (docs/performance.md)."""
NO_HISTORY_SYSTEMATIC = 0.5
"""The relative error allowed for spend the calibration knows nothing of: the ceiling of every widening."""
SAME_KIND = 1.25
"""A profile feature within this factor of the calibration days' range is the same kind of traffic: days drawn from
one kind of traffic differ by this much by chance (a few hundred turns, a few dozen conversations)."""
NO_HISTORY = "no history in the ledger: rough defaults (the interval is wide)"
HISTORY_DAYS = 60
MIN_CALLS_TO_FIT = 20


@dataclass(frozen=True)
class Line:
    """y = intercept + slope * x, with the scatter (standard deviation) of y around it."""

    intercept: float
    slope: float
    scatter: float = 0.0

    def at(self, x: float) -> float:
        return max(0.0, self.intercept + self.slope * x)

    @classmethod
    def fit(cls, xs: list[float], ys: list[float]) -> "Line":
        """Least squares; a constant when x does not vary."""
        n = len(xs)
        mean_x, mean_y = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
        intercept = mean_y - slope * mean_x
        residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
        scatter = math.sqrt(sum(r * r for r in residuals) / max(1, n - 2))
        return cls(intercept, slope, scatter)


@dataclass(frozen=True)
class StageCalibration:
    """How one stage on one model turns a request into billed tokens, learnt from the ledger."""

    prompt: Line  # prompt tokens from the local count of the request
    output: Line  # output tokens from the local count of the turn's text
    thinking: Line  # thinking tokens from the local count of the turn's text
    cached_share: float  # of the prompt tokens, billed at the cache-read rate
    attempts_per_call: float  # billed attempts per call sent (>= 1: rejected answers are paid)
    calls: int  # calls it was fitted on; 0 for the defaults
    source: str


DEFAULTS = {
    CLEAN: StageCalibration(Line(0, 1.0, 20), Line(30, 1.0, 20), Line(0, 0, 0), 0.0, 1.0, 0, "defaults (no history)"),
    FUNCTION: StageCalibration(
        Line(150, 1.0, 30), Line(15, 0, 10), Line(0, 0, 0), 0.0, 1.0, 0, "defaults (no history)"
    ),
}


@dataclass(frozen=True)
class TrafficProfile:
    """The shape of some traffic, as sums that add up across days: what a calibration was fitted on."""

    turns: int = 0
    conversations: int = 0
    user_turns: int = 0
    chars: float = 0.0
    chars_squared: float = 0.0
    evaluations: frozenset[str] = frozenset()

    @classmethod
    def of(cls, turns: Iterable[Turn]) -> "TrafficProfile":
        """The profile of these turns (as landed, or as `raw_turns` holds them)."""
        turns = list(turns)
        lengths = [len(turn.text) for turn in turns]
        return cls(
            turns=len(turns),
            conversations=len({(turn.evaluation_id, turn.conversation_id) for turn in turns}),
            user_turns=sum(turn.speaker == "User" for turn in turns),
            chars=float(sum(lengths)),
            chars_squared=float(sum(length * length for length in lengths)),
            evaluations=frozenset(turn.evaluation_id for turn in turns),
        )

    def __add__(self, other: "TrafficProfile") -> "TrafficProfile":
        return TrafficProfile(
            self.turns + other.turns,
            self.conversations + other.conversations,
            self.user_turns + other.user_turns,
            self.chars + other.chars,
            self.chars_squared + other.chars_squared,
            self.evaluations | other.evaluations,
        )

    def features(self) -> dict[str, float]:
        """Characters a turn (mean, and standard deviation over mean), turns a conversation, share of user turns."""
        if not self.turns:
            return {}
        mean = self.chars / self.turns
        variance = max(0.0, self.chars_squared / self.turns - mean * mean)
        return {
            "text": mean,
            "text spread": math.sqrt(variance) / mean if mean else 0.0,
            "conversations": self.turns / max(1, self.conversations),
            "user share": self.user_turns / self.turns,
        }


@dataclass
class Calibration:
    """Per (stage, model); a model with no history of its own borrows its stage's (Gemini models share a tokenizer)."""

    stages: dict[tuple[str, str], StageCalibration] = field(default_factory=dict)
    systematic: float = NO_HISTORY_SYSTEMATIC
    history_days: int = 0
    token_check: str | None = None  # what countTokens said, when a key let the forecast ask
    profiles: dict[date, TrafficProfile] = field(default_factory=dict)  # each history day's traffic

    def fitted(self, stage: str, model: str) -> bool:
        """True when `stage` on `model` has lines of its own from the ledger (not borrowed, not the defaults)."""
        calibration = self.stages.get((stage, model))
        return calibration is not None and calibration.calls > 0

    def profile(self) -> TrafficProfile:
        """The history's traffic, its days pooled."""
        return sum(self.profiles.values(), TrafficProfile())

    def of(self, stage: str, model: str) -> StageCalibration:
        if (stage, model) in self.stages:
            return self.stages[(stage, model)]
        same_stage = [c for (s, _), c in self.stages.items() if s == stage]
        if same_stage:
            borrowed = max(same_stage, key=lambda c: c.calls)
            return replace(borrowed, source=f"{borrowed.source}, borrowed for {model}")
        return DEFAULTS[stage]

    def describe(self) -> str:
        calls = sum(c.calls for c in self.stages.values())
        described = (
            f"the ledger: {calls:,} calls over {self.history_days} day(s), days fitted within {self.systematic:.1%}"
            if calls
            else "defaults: no history in the ledger (the interval is wide)"
        )
        return f"{described}; {self.token_check}" if self.token_check else described


@dataclass(frozen=True)
class ForecastSettings:
    """What the pipeline would be run with: the same models, thinking, context and endpoint as a run."""

    models: ModelSettings
    endpoint_id: str
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    tier: Tier = Tier()
    """The tier requests ask for: the batch price in batch mode, flex or priority when asked (COST_PIPELINE_...)."""

    @classmethod
    def of(cls, settings: GeminiSettings) -> "ForecastSettings":
        processing = settings.processing
        asked = processing.requested_tier()
        tier = Tier(processing.mode, SERVED_AS[asked] if asked else None)
        return cls(settings.models, settings.endpoint_id(), tier=tier)

    def describe_tier(self) -> str:
        asked = self.tier.served_tier
        return f"{self.tier.processing} processing" + (f", {asked} asked" if asked else "")


@dataclass
class DayForecast:
    """A day's forecast; `systematic` is its relative error, the calibration's widened for each of `reasons`."""

    day: date
    landed: bool = True
    turns: int = 0
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: float = 0.0
    output_tokens: float = 0.0
    thinking_tokens: float = 0.0
    forecast_usd: Decimal = Decimal(0)
    variance_usd2: float = 0.0  # per-call scatter, summed
    systematic: float = NO_HISTORY_SYSTEMATIC
    unpriced_calls: int = 0
    reasons: list[str] = field(default_factory=list)  # why the interval is wider than the calibration's own
    usd_by_part: dict[tuple[str, str, str], Decimal] = field(default_factory=dict, repr=False)
    """(evaluation, stage, model) -> its part of forecast_usd."""

    @property
    def api_calls(self) -> int:
        return self.calls - self.cache_hits

    def bounds(self) -> tuple[Decimal, Decimal]:
        """[low, high] at about 95%: the calls' scatter plus the calibration's systematic error."""
        spread = Z_95 * math.sqrt(self.variance_usd2) + self.systematic * float(self.forecast_usd)
        spread_usd = Decimal(str(round(spread, 12)))
        return max(Decimal(0), self.forecast_usd - spread_usd), self.forecast_usd + spread_usd

    def as_dict(self) -> dict:
        low, high = self.bounds()
        return {
            "day": self.day.isoformat(),
            "landed": self.landed,
            "turns": self.turns,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "api_calls": self.api_calls,
            "prompt_tokens": round(self.prompt_tokens),
            "output_tokens": round(self.output_tokens),
            "thinking_tokens": round(self.thinking_tokens),
            "forecast_usd": _usd(self.forecast_usd),
            "low_usd": _usd(low),
            "high_usd": _usd(high),
            "unpriced_calls": self.unpriced_calls,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class CachedAnswers:
    """What the response cache holds for the turns being forecast."""

    by_request: dict[str, dict]  # request_hash -> result (a clean result has cleaned_text)
    cleaned_by_text: dict[str, set[str]]  # raw text hash -> texts it was cleaned to before, in any context

    @classmethod
    def empty(cls) -> "CachedAnswers":
        return cls({}, {})


@dataclass(frozen=True)
class CallEstimate:
    """One paid call's predicted tokens, and its cost per attempt (None: the model has no price)."""

    prompt: float
    cached: float
    output: float
    thinking: float
    cost: Decimal | None
    scatter_usd: float  # standard deviation of the cost
    attempts: float  # billed attempts expected per call


class CallEstimator:
    """Predicts a call's tokens and cost from the calibration: the forecast's unit, and what a budget reserves."""

    def __init__(
        self, calibration: Calibration, prices: PriceBook, priced_at: datetime | None = None, tier: Tier = Tier()
    ):
        self.calibration, self.prices, self.tier = calibration, prices, tier
        self.priced_at = priced_at or datetime.now(timezone.utc)
        self._unit_prices: dict[str, tuple[Decimal, Decimal, Decimal] | None] = {}

    def estimate(self, stage: str, model: str, request_text: str, turn_text: str) -> CallEstimate:
        calibration = self.calibration.of(stage, model)
        text_tokens = estimate_tokens(turn_text)
        prompt = calibration.prompt.at(estimate_tokens(request_text))
        output, thinking = calibration.output.at(text_tokens), calibration.thinking.at(text_tokens)
        cached = prompt * calibration.cached_share
        prices = self._unit_price(model)
        if prices is None:
            return CallEstimate(prompt, cached, output, thinking, None, 0.0, calibration.attempts_per_call)
        input_price, cached_price, output_price = prices
        cost = (
            Decimal(str(prompt - cached)) * input_price
            + Decimal(str(cached)) * cached_price
            + Decimal(str(output + thinking)) * output_price
        )
        share = calibration.cached_share
        blended_input = float(input_price) * (1 - share) + float(cached_price) * share
        scatter = math.sqrt(
            (calibration.prompt.scatter * blended_input) ** 2
            + (calibration.output.scatter * float(output_price)) ** 2
            + (calibration.thinking.scatter * float(output_price)) ** 2
        )
        return CallEstimate(prompt, cached, output, thinking, cost, scatter, calibration.attempts_per_call)

    def high(self, request: LlmRequest) -> Decimal:
        """What one attempt of `request` could cost: the estimate plus three scatters (0 when the model has no
        price)."""
        estimate = self.estimate(request.stage, request.model, request.text(), request.contents[-1][-1])
        if estimate.cost is None:
            return Decimal(0)
        return estimate.cost + Decimal(str(round(3 * estimate.scatter_usd, 12)))

    def _unit_price(self, model: str) -> tuple[Decimal, Decimal, Decimal] | None:
        """USD per input, cached input and output token on `model` (below any long-context tier), or None."""
        if model not in self._unit_prices:
            million = 1_000_000
            per = [
                self.prices.cost(model, counts, self.priced_at, None, self.tier)
                for counts in (
                    Usage(input_tokens=million),
                    Usage(input_tokens=million, cached_tokens=million),
                    Usage(output_tokens=million),
                )
            ]
            plain, cached, output = (p.total_cost for p in per)
            self._unit_prices[model] = (
                None
                if plain is None or cached is None or output is None
                else (plain / million, cached / million, output / million)
            )
        return self._unit_prices[model]


class Forecaster:
    """Forecasts days one at a time; identical requests across the forecast's days are paid once, as in a run."""

    def __init__(
        self, settings: ForecastSettings, calibration: Calibration, prices: PriceBook, priced_at: datetime | None = None
    ):
        self.settings, self.calibration = settings, calibration
        self.estimator = CallEstimator(calibration, prices, priced_at, settings.tier)
        self._seen: set[str] = set()

    def day(self, day: date, turns: Iterable[Turn], cached: CachedAnswers) -> DayForecast:
        """The day's forecast, its interval widened where its traffic is unlike the calibration's (`day_error`)."""
        turns = list(turns)
        forecast = DayForecast(day)
        for conversation in _conversations(turns):
            self._conversation(conversation, cached, forecast)
        forecast.systematic, forecast.reasons = day_error(
            self.calibration, TrafficProfile.of(turns), forecast.usd_by_part
        )
        return forecast

    def _conversation(self, turns: list[Turn], cached: CachedAnswers, forecast: DayForecast) -> None:
        models = self.settings.models
        context: list[tuple[str, str]] = []
        alike: list[str] = []  # the context as the requests will see it, up to disfluencies
        for turn in turns:
            forecast.turns += 1
            request = cleaning_request(
                models.clean_model, turn.speaker, turn.text, models.window(context), models.thinking_budget
            )
            exact = request.request_hash(self.settings.endpoint_id)
            answer = cached.by_request.get(exact)
            cleaned = answer.get("cleaned_text") if answer else None
            key = "\x1f".join([f"clean:{models.clean_model}", turn.speaker, turn.text, *models.window(alike)])
            self._count(forecast, request, key, turn, free=answer is not None)
            context.append((turn.speaker, cleaned or turn.text))
            alike.append(f"{turn.speaker}:{disfluent_key(cleaned or turn.text)}")
            if turn.speaker == "User":
                self._function(turn, cleaned, cached, forecast)

    def _function(self, turn: Turn, cleaned: str | None, cached: CachedAnswers, forecast: DayForecast) -> None:
        models = self.settings.models
        candidates = [cleaned] if cleaned else sorted(cached.cleaned_by_text.get(_text_hash(turn.text), ()))
        for text in candidates:
            request = function_request(models.function_model, text, models.thinking_budget)
            key = request.request_hash(self.settings.endpoint_id)
            if key in cached.by_request or key in self._seen:
                self._count(forecast, request, key, turn, free=True)
                return
        # Not cached: the pipeline will ask with the text as cleaned, which the raw text stands for here.
        request = function_request(models.function_model, cleaned or turn.text, models.thinking_budget)
        key = f"function:{models.function_model}:{disfluent_key(cleaned or turn.text)}"
        self._count(forecast, request, key, turn, free=False)

    def _count(self, forecast: DayForecast, request: LlmRequest, key: str, turn: Turn, free: bool) -> None:
        forecast.calls += 1
        if free or key in self._seen:
            forecast.cache_hits += 1
            return
        self._seen.add(key)
        estimate = self.estimator.estimate(request.stage, request.model, request.text(), turn.text)
        forecast.prompt_tokens += estimate.prompt
        forecast.output_tokens += estimate.output
        forecast.thinking_tokens += estimate.thinking
        if estimate.cost is None:
            forecast.unpriced_calls += 1
            return
        cost = estimate.cost * Decimal(str(estimate.attempts))
        forecast.forecast_usd += cost
        forecast.variance_usd2 += (estimate.attempts * estimate.scatter_usd) ** 2
        part = (turn.evaluation_id, request.stage, request.model)
        forecast.usd_by_part[part] = forecast.usd_by_part.get(part, Decimal(0)) + cost


FEATURE_WORDS = {  # label, more, less, how a value is written, what the values are
    "text": ("text", "longer", "shorter", "{:.0f}", "{} vs {} characters a turn"),
    "text spread": ("text lengths", "more varied", "less varied", "{:.0%}", "standard deviation {} vs {} of the mean"),
    "conversations": ("conversations", "longer", "shorter", "{:.1f}", "{} vs {} turns"),
    "user share": ("user turns", "more frequent", "rarer", "{:.0%}", "{} vs {} of turns"),
}
NAMED_EVALUATIONS = 3


def day_error(
    calibration: Calibration, profile: TrafficProfile, usd_by_part: dict[tuple[str, str, str], Decimal]
) -> tuple[float, list[str]]:
    """A day's relative error (at 95%) and why: never below the calibration's, and wider only with a reason.

    Each profile feature outside the range of the calibration's days, by a log ratio past SAME_KIND, adds the excess
    in quadrature to the calibration's error, at most NO_HISTORY_SYSTEMATIC in all. The share of `usd_by_part` from
    evaluations never seen, or from stages and models without lines of their own, gets the no-history width.
    """
    if not any(stage.calls for stage in calibration.stages.values()):
        return max(calibration.systematic, NO_HISTORY_SYSTEMATIC), [NO_HISTORY]
    reasons: list[str] = []
    shift = _profile_shift(calibration, profile, reasons)
    known = math.hypot(calibration.systematic, min(NO_HISTORY_SYSTEMATIC, shift))
    unknown = _unknown_share(calibration, usd_by_part, reasons)
    return (1 - unknown) * known + unknown * max(known, NO_HISTORY_SYSTEMATIC), reasons


def _profile_shift(calibration: Calibration, profile: TrafficProfile, reasons: list[str]) -> float:
    """The day's features' log ratios to the calibration days' range past SAME_KIND, in quadrature; a reason for
    each."""
    days = [day.features() for day in calibration.profiles.values() if day.turns]
    if not days:
        return 0.0
    excesses = []
    for name, value in profile.features().items():
        low, high = min(day[name] for day in days), max(day[name] for day in days)
        nearest = min(max(value, low), high)
        excess = _log_ratio(value, nearest) - math.log(SAME_KIND)
        if excess > 0:
            excesses.append(excess)
            reasons.append(_shift_reason(name, value, (low, high)))
    return math.sqrt(sum(excess * excess for excess in excesses))


def _log_ratio(value: float, reference: float) -> float:
    if value == reference:
        return 0.0
    return abs(math.log(value / reference)) if value > 0 and reference > 0 else math.inf


def _shift_reason(name: str, value: float, seen: tuple[float, float]) -> str:
    label, more, less, written, detail = FEATURE_WORDS[name]
    low, high = (written.format(edge) for edge in seen)
    figures = detail.format(written.format(value), low if low == high else f"{low} to {high}")
    nearest = seen[0] if value < seen[0] else seen[1]
    if not (value > 0 and nearest > 0):
        return f"{label}: {figures} in calibration"
    ratio = value / nearest
    return f"{label} {max(ratio, 1 / ratio):.1f}x {more if ratio > 1 else less} than calibration ({figures})"


def _unknown_share(
    calibration: Calibration, usd_by_part: dict[tuple[str, str, str], Decimal], reasons: list[str]
) -> float:
    """The share of the day's forecast spend the calibration never saw; a reason appended for each part of it."""
    total = sum(usd_by_part.values(), Decimal(0))
    if not total:
        return 0.0
    seen = calibration.profile().evaluations
    new_evaluations: dict[str, Decimal] = defaultdict(Decimal)
    unfitted: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    unknown = Decimal(0)
    for (evaluation, stage, model), usd in usd_by_part.items():
        if evaluation not in seen:
            new_evaluations[evaluation] += usd
        if not calibration.fitted(stage, model):
            unfitted[(stage, model)] += usd
        if evaluation not in seen or not calibration.fitted(stage, model):
            unknown += usd
    named = sorted(new_evaluations.items(), key=lambda item: (-item[1], item[0]))
    for evaluation, usd in named[:NAMED_EVALUATIONS]:
        reasons.append(f"evaluation {evaluation} never seen in calibration ({usd / total:.0%} of the forecast)")
    if rest := named[NAMED_EVALUATIONS:]:
        usd = sum((usd for _, usd in rest), Decimal(0))
        reasons.append(f"{len(rest)} more evaluations never seen in calibration ({usd / total:.0%} of the forecast)")
    for (stage, model), usd in sorted(unfitted.items()):
        source = calibration.of(stage, model).source
        reasons.append(f"no calibration for {stage} on {model}: {source} ({usd / total:.0%} of the forecast)")
    return float(unknown / total)


FILLERS = {"um", "uh", "er", "erm", "hmm", "mm", "ah", "like"}
_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


def disfluent_key(text: str) -> str:
    """`text` less what the cleaning prompt removes (fillers, "you know", stutters, repeated words, case, punctuation).

    Only a key for "will these be cleaned to the same text": never sent, never counted.
    """
    words: list[str] = []
    for word in _WORD.findall(text.lower()):
        head, _, rest = word.partition("-")
        if rest and rest.startswith(head):  # a stutter: "b-book"
            word = rest
        if word in FILLERS or (words and words[-1] == word):
            continue
        if word == "know" and words and words[-1] == "you":
            words.pop()
            continue
        words.append(word)
    return " ".join(words)


def landed_turns(landing_root: str | Path, day: date, max_text_chars: int) -> list[Turn] | None:
    """The day's valid turns as ingest would keep them (quarantined lines left out); None when it never landed."""
    try:
        reader = LandingReader(landing_folder(landing_root, day), max_text_chars)
        return [item for item in reader if isinstance(item, Turn)]
    except LandingFolderMissing:
        return None


def _conversations(turns: Iterable[Turn]) -> list[list[Turn]]:
    grouped: dict[tuple[str, str], list[Turn]] = defaultdict(list)
    for turn in turns:
        grouped[(turn.evaluation_id, turn.conversation_id)].append(turn)
    return [sorted(group, key=lambda t: t.turn_index) for _, group in sorted(grouped.items())]


def _text_hash(text: str) -> str:
    from cost_pipeline.gemini.cache import text_hash

    return text_hash(text)


def _usd(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.000001'))}"


# History and cache: read-only queries over the DuckDB file.

HISTORY_SQL = """
WITH turns AS (
    SELECT partition_date, turn_id, speaker, text,
           list(struct_pack(s := speaker, t := text)) OVER (
               PARTITION BY partition_date, evaluation_id, conversation_id ORDER BY turn_index
               ROWS BETWEEN {context} PRECEDING AND 1 PRECEDING) AS context
    FROM raw_turns WHERE partition_date IN (SELECT unnest(?::DATE[]))
)
SELECT c.partition_date, c.stage, c.model, c.input_tokens, c.cached_tokens, c.output_tokens, c.thinking_tokens,
       c.billed_attempts, t.speaker, t.text, t.context
FROM llm_calls c JOIN turns t USING (partition_date, turn_id)
WHERE NOT c.cache_hit AND c.status = 'ok' AND c.usage_source = 'reported' AND c.billed_attempts = 1
  AND c.endpoint = ?
"""
PROFILE_SQL = """
SELECT partition_date, count(*), count(DISTINCT (evaluation_id, conversation_id)), count(*) FILTER (speaker = 'User'),
       sum(length(text)), sum(length(text)::DOUBLE * length(text)), list(DISTINCT evaluation_id)
FROM raw_turns WHERE partition_date IN (SELECT unnest(?::DATE[])) GROUP BY ALL
"""
ATTEMPTS_SQL = """
SELECT stage, model, sum(billed_attempts) / count(*) FROM llm_calls
WHERE NOT cache_hit AND partition_date IN (SELECT unnest(?::DATE[])) AND endpoint = ? GROUP BY ALL
"""


def calibrate(
    connection, settings: ForecastSettings, leave_out: Iterable[date] = (), days: int = HISTORY_DAYS
) -> Calibration:
    """Fit each stage and model on the calls to the same endpoint of the latest `days` data days, `leave_out` left out.

    The days being forecast are left out, so a forecast of a day already run is not fitted on its own answers.
    """
    from cost_pipeline.storage.tables import table_exists

    if not (table_exists(connection, "main", "llm_calls") and table_exists(connection, "main", "raw_turns")):
        return Calibration()
    history = [
        day
        for (day,) in connection.execute(
            "SELECT DISTINCT partition_date FROM llm_calls WHERE endpoint = ? AND partition_date NOT IN "
            "(SELECT unnest(?::DATE[])) "
            "ORDER BY 1 DESC LIMIT ?",
            [settings.endpoint_id, sorted(set(leave_out)), days],
        ).fetchall()
    ]
    if not history:
        return Calibration()
    rows = connection.execute(
        HISTORY_SQL.format(context=max(1, settings.models.context_turns)), [history, settings.endpoint_id]
    ).fetchall()
    samples: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for day, stage, model, prompt, cached, output, thinking, _, speaker, text, context in rows:
        if stage == CLEAN:
            earlier = settings.models.window([(c["s"], c["t"]) for c in (context or [])])
            request = cleaning_request(model, speaker, text, earlier, settings.models.thinking_budget)
        else:
            request = function_request(model, text, settings.models.thinking_budget)
        samples[(stage, model)].append(
            (
                day,
                estimate_tokens(request.text()),
                estimate_tokens(text),
                prompt or 0,
                cached or 0,
                output or 0,
                thinking or 0,
            )
        )
    attempts = {
        (stage, model): float(ratio)
        for stage, model, ratio in connection.execute(ATTEMPTS_SQL, [history, settings.endpoint_id]).fetchall()
    }
    calibration = Calibration(history_days=len({s[0] for group in samples.values() for s in group}))
    for day, turns, conversations, users, chars, squares, evaluations in connection.execute(
        PROFILE_SQL, [history]
    ).fetchall():
        calibration.profiles[day] = TrafficProfile(turns, conversations, users, chars, squares, frozenset(evaluations))
    for key, group in samples.items():
        if len(group) < MIN_CALLS_TO_FIT:
            continue
        prompts = [s[3] for s in group]
        calibration.stages[key] = StageCalibration(
            prompt=Line.fit([s[1] for s in group], prompts),
            output=Line.fit([s[2] for s in group], [s[5] for s in group]),
            thinking=Line.fit([s[2] for s in group], [s[6] for s in group]),
            cached_share=sum(s[4] for s in group) / max(1, sum(prompts)),
            attempts_per_call=max(1.0, attempts.get(key, 1.0)),
            calls=len(group),
            source=f"the ledger ({len(group):,} calls)",
        )
    calibration.systematic = _day_error(calibration, samples) if calibration.stages else NO_HISTORY_SYSTEMATIC
    return calibration


def _day_error(calibration: Calibration, samples: dict[tuple[str, str], list[tuple]]) -> float:
    """How far the fitted lines miss whole days' tokens of the history (relative, the worst day), at least
    MIN_SYSTEMATIC."""
    predicted: dict[date, float] = defaultdict(float)
    actual: dict[date, float] = defaultdict(float)
    for key, group in samples.items():
        if key not in calibration.stages:
            continue
        fitted = calibration.stages[key]
        for day, request_tokens, text_tokens, prompt, _, output, thinking in group:
            # Output weighs about four times input in Gemini's prices: weigh the tokens alike here.
            predicted[day] += fitted.prompt.at(request_tokens) + 4 * (
                fitted.output.at(text_tokens) + fitted.thinking.at(text_tokens)
            )
            actual[day] += prompt + 4 * (output + thinking)
    errors = [abs(predicted[day] - actual[day]) / actual[day] for day in actual if actual[day]]
    return max([MIN_SYSTEMATIC, *errors])


CACHE_SQL = """
SELECT request_hash, text_hash, stage, result_json FROM llm_response_cache
WHERE text_hash IN (SELECT unnest(?::VARCHAR[])) AND model IN (?, ?)
"""


def cached_answers(connection, turns: list[Turn], settings: ForecastSettings) -> CachedAnswers:
    """The response cache's entries for these turns' texts, for the configured models."""
    import json

    from cost_pipeline.gemini.cache import TABLE
    from cost_pipeline.storage.tables import table_exists

    if not turns or not table_exists(connection, "main", TABLE):
        return CachedAnswers.empty()
    hashes = sorted({_text_hash(turn.text) for turn in turns})
    by_request: dict[str, dict] = {}
    cleaned_by_text: dict[str, set[str]] = defaultdict(set)
    for request_hash, text_hash, stage, result_json in connection.execute(
        CACHE_SQL, [hashes, settings.models.clean_model, settings.models.function_model]
    ).fetchall():
        result = json.loads(result_json)
        by_request[request_hash] = result
        if stage == CLEAN and result.get("cleaned_text"):
            cleaned_by_text[text_hash].add(result["cleaned_text"])
    return CachedAnswers(by_request, dict(cleaned_by_text))


@dataclass
class Forecast:
    days: list[DayForecast]
    calibration: Calibration
    settings: ForecastSettings

    def total(self) -> DayForecast:
        total = DayForecast(self.days[0].day if self.days else date.today(), systematic=self.calibration.systematic)
        usd = sum((day.forecast_usd for day in self.days), Decimal(0))
        if usd:  # each day's error is systematic: they add with the days' spend
            total.systematic = sum(day.systematic * float(day.forecast_usd / usd) for day in self.days)
        for day in self.days:
            for name in (
                "turns",
                "calls",
                "cache_hits",
                "prompt_tokens",
                "output_tokens",
                "thinking_tokens",
                "forecast_usd",
                "variance_usd2",
                "unpriced_calls",
            ):
                setattr(total, name, getattr(total, name) + getattr(day, name))
        return total

    def as_dict(self) -> dict:
        total = self.total().as_dict()
        for name in ("day", "landed", "reasons"):
            total.pop(name)
        return {
            "days": [day.as_dict() for day in self.days],
            "total": total,
            "models": {CLEAN: self.settings.models.clean_model, FUNCTION: self.settings.models.function_model},
            "processing": "standard",
            "endpoint": self.settings.endpoint_id,
            "calibration": self.calibration.describe(),
            "complete": total["unpriced_calls"] == 0 and all(day.landed for day in self.days),
        }


COUNT_SAMPLE = 20


def count_tokens_check(
    calibration: Calibration, settings: ForecastSettings, turns: list[Turn], count: Callable[[str, str], int]
) -> str:
    """With a key: the API's countTokens on a sample of cleaning requests against the local count.

    A stage still on the rough defaults (no history for it) takes the measured ratio as its
    prompt line; a calibrated one keeps the ledger's and the ratio is reported beside it.
    """
    requests = []
    for conversation in _conversations(turns):
        context: list[tuple[str, str]] = []
        for turn in conversation:
            window = settings.models.window(context)
            requests.append(
                cleaning_request(
                    settings.models.clean_model, turn.speaker, turn.text, window, settings.models.thinking_budget
                )
            )
            context.append((turn.speaker, turn.text))
        if len(requests) >= COUNT_SAMPLE:
            break
    sample = requests[:COUNT_SAMPLE]
    if not sample:
        return "countTokens: no request to count"
    counted = sum(count(request.model, request.text()) for request in sample)
    local = sum(estimate_tokens(request.text()) for request in sample)
    ratio = counted / local if local else 1.0
    for stage in (CLEAN, FUNCTION):
        model = settings.models.clean_model if stage == CLEAN else settings.models.function_model
        current = calibration.of(stage, model)
        if current.calls == 0:
            calibration.stages[(stage, model)] = replace(
                current,
                prompt=Line(current.prompt.intercept, ratio, current.prompt.scatter),
                source=f"defaults, prompt scaled by countTokens ({ratio:.3f} tokens per local token)",
            )
    return f"countTokens on {len(sample)} sample requests: {counted:,} tokens, {ratio:.3f} per local token"


def forecast_days(
    database: str | Path,
    landing_root: str | Path,
    days: list[date],
    settings: ForecastSettings,
    prices: PriceBook,
    count: Callable[[str, str], int] | None = None,
) -> Forecast:
    """Forecast `days` in order, calibrated on the ledger (the days themselves left out).

    `count(model, text)` is the API's countTokens, given only when a key is set: then a
    sample is counted (free calls that generate nothing); otherwise no API call is made.
    """
    from contextlib import nullcontext

    from cost_pipeline.storage.connect import connect
    from cost_pipeline.storage.lake import store_exists

    with connect(database, read_only=True) if store_exists(database) else nullcontext() as connection:
        calibration = calibrate(connection, settings, leave_out=days) if connection else Calibration()
        if count is not None:
            sample_day = next(
                (turns for day in days if (turns := landed_turns(landing_root, day, settings.max_text_chars))), None
            )
            calibration.token_check = count_tokens_check(calibration, settings, sample_day or [], count)
        forecaster = Forecaster(settings, calibration, prices)
        results = []
        for day in days:
            turns = landed_turns(landing_root, day, settings.max_text_chars)
            if turns is None:
                results.append(DayForecast(day, landed=False, systematic=calibration.systematic))
                continue
            cached = cached_answers(connection, turns, settings) if connection else CachedAnswers.empty()
            results.append(forecaster.day(day, turns, cached))
    return Forecast(results, calibration, settings)


def render_table(forecast: Forecast) -> str:
    """The forecast for a terminal: a line per day, the total, and what it is calibrated on."""
    header = (
        f"{'day':<10}  {'turns':>7}  {'calls':>7}  {'cache_hits':>10}  {'forecast_usd':>12}  "
        f"{'low_usd':>10}  {'high_usd':>10}"
    )
    lines = [header, "-" * len(header)]
    for day in forecast.days:
        row = day.as_dict()
        if not day.landed:
            lines.append(f"{row['day']:<10}  never landed: nothing to forecast")
            continue
        lines.append(
            f"{row['day']:<10}  {row['turns']:>7,}  {row['calls']:>7,}  {row['cache_hits']:>10,}  "
            f"{row['forecast_usd']:>12}  {row['low_usd']:>10}  {row['high_usd']:>10}"
        )
        lines += [f"{'':<10}  interval widened: {reason}" for reason in day.reasons]
    total = forecast.as_dict()["total"]
    lines += [
        "-" * len(header),
        f"{'TOTAL':<10}  {total['turns']:>7,}  {total['calls']:>7,}  {total['cache_hits']:>10,}  "
        f"{total['forecast_usd']:>12}  {total['low_usd']:>10}  {total['high_usd']:>10}",
        f"models: clean {forecast.settings.models.clean_model}, function {forecast.settings.models.function_model}; "
        f"{forecast.settings.describe_tier()}; calibrated on {forecast.calibration.describe()}"
        + ("" if forecast.calibration.token_check else "; no API call was made"),
    ]
    if total["unpriced_calls"]:
        lines.append(f"{total['unpriced_calls']} calls are on a model with no price: the total leaves them out")
    return "\n".join(lines)
