"""What the Gemini session asks of a spend limit before each attempt; `money/budgets.py` answers it.

Before an attempt leaves, the session asks the run's budget to reserve its high forecast:
a reservation, None (the attempt could break a limit: it is not sent), or `WAIT`.
"""

WAIT = "wait"
"""The attempt fits once the attempts in flight have settled (they hold more than they cost)."""
