"""What the Gemini session asks of a spend limit before each attempt; `money/budgets.py` answers it.

Before an attempt leaves, the session asks the run's budget to reserve its high forecast:
a reservation, None (the attempt could break a limit: it is not sent), or `WAIT`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

WAIT = "wait"
"""The attempt fits once the attempts in flight have settled (they hold more than they cost)."""


class SpendLimit(Protocol):
    """A run's spend limits as the session uses them (`money/budgets.py`'s `Budget`)."""

    @property
    def exhausted(self) -> str | None:
        """Which limit stopped the run's calls; None while they hold."""
        ...

    def blocks(self, evaluation_id: str) -> bool: ...

    def reserve(self, evaluation_id: str, amount: Decimal) -> Any:
        """A reservation for one attempt's high forecast, `WAIT`, or None (it could break a limit)."""
        ...

    def settle(self, reservation: Any, cost: Decimal | None) -> None: ...

    def skip(self, stage: str) -> None: ...


@dataclass(frozen=True)
class SpendGuard:
    """What a session checks around each attempt: the limits, the attempt's high forecast, and what it cost."""

    limit: SpendLimit
    forecast: Callable[[Any], Decimal]
    """An `LlmRequest`'s high forecast: what the reservation holds while the attempt is in flight."""
    cost: Callable[[Any], Decimal | None]
    """An ended `Attempt`'s cost (None: billing unknown)."""
