"""The day's event loop in its own thread: the same results as asyncio.run, a fresh exception stack, clean
interrupts."""

import asyncio
import contextvars
import os
import signal
import sys
import threading

import pytest

from cost_pipeline.gemini_step.loop_thread import run_in_own_thread

RUN = contextvars.ContextVar("run", default=None)


def test_results_errors_and_context_variables_come_through_as_with_asyncio_run():
    async def answer():
        return RUN.get(), threading.current_thread() is threading.main_thread()

    async def fail():
        raise KeyError("lost")

    RUN.set("run-1")
    assert run_in_own_thread(answer()) == ("run-1", False)
    with pytest.raises(KeyError, match="lost"):
        run_in_own_thread(fail())


def test_the_loop_starts_on_an_empty_stack_of_handled_exceptions():
    """What the thread is for: an exception being handled by the caller (and the generators around it, as Dagster's
    are around a step) is not on the loop's stack, so the loop's raises do not walk the caller's frames."""

    async def handled():
        return sys.exc_info()[1]

    try:
        raise ValueError("handled by the caller")
    except ValueError as caller:
        assert asyncio.run(handled()) is caller  # in the caller's thread the loop sees the caller's stack
        assert run_in_own_thread(handled()) is None


def test_an_interrupt_of_the_caller_cancels_every_task_and_waits_for_them_before_it_goes_on():
    """As Dagster's termination does, a signal handler raises in the waiting thread: every task (awaited by the day
    or left running) finishes its cancellation, say recording an attempt cut off in flight, before the interrupt is
    seen."""

    class Terminated(Exception):
        pass

    def terminate(signum, frame):
        raise Terminated()

    recorded = []

    async def call(number):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # recording the attempt takes a moment of its own
            recorded.append(number)
            raise

    async def day():
        left_running = [asyncio.create_task(call("stray"))]  # as a checkpoint task may be
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        await asyncio.gather(*(call(n) for n in range(3)))
        return left_running

    previous = signal.signal(signal.SIGUSR1, terminate)
    try:
        with pytest.raises(Terminated):
            run_in_own_thread(day())
        assert sorted(map(str, recorded)) == ["0", "1", "2", "stray"]
    finally:
        signal.signal(signal.SIGUSR1, previous)
