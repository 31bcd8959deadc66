"""A day's event loop in a thread of its own, which an interrupt of the calling thread stops cleanly.

Why: termination. Dagster terminates a step by raising in the thread that runs it (its
SIGINT handler). With the loop in that thread, the exception would surface inside whichever
task was running: that one call would be recorded as an unbilled error (though its answer
may have been billed), and the day would go on to finish every conversation in flight,
paying for calls after the person pressed Terminate. Here it surfaces in the waiting
thread, which cancels the day at once. A fresh thread also starts with an empty stack of
handled exceptions, so the SDK's internal raises do not walk Dagster's nested generators.

Guarantees. `run_in_own_thread(coroutine)` returns what `asyncio.run(coroutine)` would
return, or raises what it would raise, and runs it with the caller's context variables.
If the calling thread is interrupted while it waits (Dagster raises its termination in
the thread that runs the step; Ctrl-C raises KeyboardInterrupt), the coroutine's task is
cancelled and the loop finishes as `asyncio.run` finishes (every other task cancelled and
awaited), so each attempt in flight records how it ended, before the interrupt goes on.
A second interrupt during that wait goes on at once. No Dagster here.
"""

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_in_own_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coroutine)` in a new thread, waited for here; an interrupt here cancels it first."""
    started, finished = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    async def main() -> T:
        outcome["loop"], outcome["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        return await coroutine

    def run() -> None:
        try:
            outcome["result"] = context.run(asyncio.run, main())
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err
        finally:
            started.set()
            finished.set()

    context = contextvars.copy_context()
    thread = threading.Thread(target=run, name="event-loop", daemon=True)
    thread.start()
    # Waited for on an Event, not with Thread.join: Python 3.11's join, interrupted by a signal handler's exception,
    # releases the running thread's lock and then takes it for finished (bpo-45274's fix), so it would not wait again.
    try:
        finished.wait()
    except BaseException:
        started.wait()
        if "task" in outcome:
            try:
                outcome["loop"].call_soon_threadsafe(outcome["task"].cancel)
            except RuntimeError:  # the loop closed meanwhile: it has finished anyway
                pass
        finished.wait()
        raise
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["result"]


def thread_schedule() -> tuple[float, float] | None:
    """(seconds on a core, seconds runnable but waiting for one) of the calling thread so far; None off Linux.

    Called from the loop's thread at its start and end, the difference says whether a day was bound by its own CPU
    (on a core nearly all its elapsed time) or starved of a core (waiting), rather than waiting on Gemini.
    """
    try:
        with open("/proc/thread-self/schedstat") as stat:
            on_core, waiting = stat.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(on_core) / 1e9, int(waiting) / 1e9
