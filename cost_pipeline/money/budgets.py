"""Hard spend limits: an attempt is sent only if what it could cost fits under every limit that applies.

Limits come from `[limits]` in costs.toml (USD, as strings so they stay exact):

    [limits]
    run = "0.50"                 # what one run may spend
    day = "2.00"                 # a data day, all its runs together (the ledger's spend of the partition)
    [limits.evaluation_month]    # an evaluation, in the current UTC calendar month (by when the money was spent)
    default = "5.00"
    [limits.evaluation]          # an evaluation, over all time
    "eval-voice-assistant-v1" = "20.00"

Before each attempt the session reserves the attempt's high forecast (the forecast's mean plus
three times its scatter, see `forecast.py`) against every limit that applies to it; when the
attempt is recorded its real cost replaces the reservation (a billing-unknown attempt keeps
its reservation). An attempt whose reservation does not fit is not sent, and from then on
every later call the limit covers is skipped (reason `budget`): all of them for the run and
day limits, that evaluation's for its own limits (the other evaluations go on). The run then
fails naming the limits, the spend and what was skipped. Guarantee: spend exceeds a limit only by what the
attempts in flight cost beyond their reservations, less than one call's cost unless a call
costs more than three scatters above its forecast. Spent money comes from the ledger when the
run starts (other runs' spend included) and from this run's attempts as they end; runs that
share a day or evaluation limit take turns (`budget_turns.py`), so the ledger a run starts
from holds every attempt of the runs before it.

Pure: no Dagster, no I/O (the baseline is passed in).
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from cost_pipeline.gemini.spend_limit import WAIT

BUDGET = "budget"


def _amount(value: object, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"[limits] {where} = {value!r} is not an amount of USD") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"[limits] {where} = {value!r} must be a non-negative amount of USD")
    return amount


@dataclass(frozen=True)
class Limits:
    """The spend limits of costs.toml's `[limits]`; empty means no limit at all (and no cost to check)."""

    run: Decimal | None = None
    day: Decimal | None = None
    evaluation_month: dict[str, Decimal] = field(default_factory=dict)
    evaluation: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: dict) -> "Limits":
        unknown = set(table) - {"run", "day", "evaluation_month", "evaluation"}
        if unknown:
            raise ValueError(
                f"[limits] has unknown key(s) {sorted(unknown)}: use run, day, evaluation_month, evaluation"
            )
        per_evaluation = {}
        for scope in ("evaluation_month", "evaluation"):
            entries = table.get(scope, {})
            if not isinstance(entries, dict):
                raise ValueError(f"[limits.{scope}] is a table of evaluation = amount (and default = amount)")
            per_evaluation[scope] = {name: _amount(value, f"{scope}.{name}") for name, value in entries.items()}
        return cls(
            run=_amount(table["run"], "run") if "run" in table else None,
            day=_amount(table["day"], "day") if "day" in table else None,
            **per_evaluation,
        )

    def __bool__(self) -> bool:
        return self.run is not None or self.day is not None or bool(self.evaluation_month) or bool(self.evaluation)

    def for_evaluation(self, scope: str, evaluation_id: str) -> Decimal | None:
        entries = getattr(self, scope)
        return entries.get(evaluation_id, entries.get("default"))


@dataclass(frozen=True)
class Spent:
    """Money already out when the run starts, from the ledger: the day's, and each evaluation's (month, all time)."""

    day: Decimal = Decimal(0)
    evaluation_month: dict[str, Decimal] = field(default_factory=dict)
    evaluation: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Reservation:
    evaluation_id: str
    amount: Decimal  # held: the forecast times the scale in force
    base: Decimal  # the forecast alone


class Budget:
    """One run's view of its limits: reservations for attempts in flight, spend as attempts end."""

    def __init__(self, limits: Limits, spent: Spent, day: str, month: str):
        self.limits, self.day, self.month = limits, day, month
        self.run_spent = Decimal(0)
        self.day_spent = spent.day
        self.month_spent: defaultdict[str, Decimal] = defaultdict(Decimal, spent.evaluation_month)
        self.all_time_spent: defaultdict[str, Decimal] = defaultdict(Decimal, spent.evaluation)
        self.reserved = Decimal(0)
        self.reserved_by_evaluation: defaultdict[str, Decimal] = defaultdict(Decimal)
        self.stopped: str | None = None  # a run or day limit: every call stops
        self.stopped_evaluations: dict[str, str] = {}  # an evaluation's limit: its calls stop
        self.skipped: Counter = Counter()  # calls skipped, by stage
        # Reservations grow when an attempt costs more than its reservation (a forecast from little history
        # runs low): every later one is scaled by the worst ratio seen, so in-flight overshoot stays bounded.
        self.scale = Decimal(1)

    @property
    def exhausted(self) -> str | None:
        """Every limit reached, one clause each; None while all hold."""
        reached = [*([self.stopped] if self.stopped else []), *self.stopped_evaluations.values()]
        return "; ".join(reached) or None

    def blocks(self, evaluation_id: str) -> bool:
        """Whether calls for `evaluation_id` are skipped without asking (a limit covering them was reached)."""
        return self.stopped is not None or evaluation_id in self.stopped_evaluations

    def reserve(self, evaluation_id: str, amount: Decimal) -> "Reservation | str | None":
        """Hold `amount` for one attempt; WAIT when it fits only once the attempts in flight settle; None (and that
        limit's calls stop from now on) when it could break a limit even then."""
        if self.blocks(evaluation_id):
            return None
        base, amount = amount, amount * self.scale
        broken = self._broken(evaluation_id, amount)
        if broken is None:
            self.reserved += amount
            self.reserved_by_evaluation[evaluation_id] += amount
            return Reservation(evaluation_id, amount, base)
        if self.reserved and self._broken(evaluation_id, amount, held=False) is None:
            return WAIT
        scope, clause = broken
        if scope == "all":
            self.stopped = clause
        else:
            self.stopped_evaluations[evaluation_id] = clause
        return None

    def settle(self, reservation: Reservation, cost: Decimal | None) -> None:
        """The attempt ended: its cost (None: billing unknown, the reservation stands in) replaces the reservation."""
        self.reserved -= reservation.amount
        self.reserved_by_evaluation[reservation.evaluation_id] -= reservation.amount
        spent = reservation.amount if cost is None else cost
        if cost is not None and reservation.base > 0 and cost > reservation.amount:
            self.scale = max(self.scale, cost / reservation.base)  # the worst ratio seen, never compounded
        self.run_spent += spent
        self.day_spent += spent
        self.month_spent[reservation.evaluation_id] += spent
        self.all_time_spent[reservation.evaluation_id] += spent

    def skip(self, stage: str) -> None:
        self.skipped[stage] += 1

    def _broken(self, evaluation_id: str, amount: Decimal, held: bool = True) -> tuple[str, str] | None:
        """The first limit `amount` more would break: its scope (all, or the evaluation) and one clause; None if
        all hold.

        `held=False` leaves the reservations of attempts in flight out (as if they had settled at no cost).
        """
        held_here = (self.reserved_by_evaluation[evaluation_id] if held else Decimal(0)) + amount
        held_all = (self.reserved if held else Decimal(0)) + amount
        checks = [
            ("all", self.limits.run, self.run_spent + held_all, "the run limit", "this run"),
            (
                "all",
                self.limits.day,
                self.day_spent + held_all,
                f"the day limit for {self.day}",
                f"{self.day} (all runs)",
            ),
            (
                "evaluation",
                self.limits.for_evaluation("evaluation_month", evaluation_id),
                self.month_spent[evaluation_id] + held_here,
                f"the monthly limit of {evaluation_id} for {self.month}",
                f"{evaluation_id} in {self.month}",
            ),
            (
                "evaluation",
                self.limits.for_evaluation("evaluation", evaluation_id),
                self.all_time_spent[evaluation_id] + held_here,
                f"the all-time limit of {evaluation_id}",
                evaluation_id,
            ),
        ]
        for scope, limit, would_be, name, whose in checks:
            if limit is not None and would_be > limit:
                spent = would_be - amount
                return scope, (
                    f"{name} is ${limit}: {whose} has spent or holds ${spent:.6f}, and the next call could "
                    f"cost up to ${amount:.6f}"
                )
        return None

    def failure(self) -> str:
        """One line for the run's failure: the limit, the spend and what was skipped."""
        skipped = ", ".join(f"{count} {stage}" for stage, count in sorted(self.skipped.items()))
        return (
            f"Budget reached: {self.exhausted}. This run spent ${self.run_spent:.6f}; "
            f"calls skipped: {skipped or 'none'} "
            f"(status skipped, reason budget). Raise [limits] in costs.toml and run the day again: answers already "
            "paid for come from the cache."
        )
