"""Calls through Gemini's Batch API: one stage of a day as a few jobs, billed at the batch price.

Why: the Batch API answers the same requests at half the input and output price, within
24 hours instead of seconds. A day becomes a small fixed number of jobs per stage (at most
`max_requests` inlined requests each), not one per turn position.

How: requests the response cache answers are free; identical requests are sent once; the
rest are inlined into jobs whose names are recorded (`batch_jobs.py`) before any waiting, so
a run killed while a job is pending finds and resumes the same job instead of paying again.
The step waits at most `max_wait_s`; past it, `JobsPending` names the jobs, and the
next run of the day collects them. When a job is done each inlined answer becomes a
ledger attempt (`processing` batch, billed whatever we make of it; an error inside the job
is not billed), is judged like a standard answer, and an accepted answer enters the cache.
A rejected answer or an error inside a job fails its call (a later run asks again).
"""

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from google.genai import errors, types

from cost_pipeline.llm import batch_jobs
from cost_pipeline.llm.answers import Verdict, judge
from cost_pipeline.llm.attempts import ACCEPTED, ERROR, REJECTED, Attempt
from cost_pipeline.llm.cache import CachedResponse
from cost_pipeline.llm.client import FAILED, OK, CallOutcome, CallTag, GeminiSession, request_contents
from cost_pipeline.llm.prompts import LlmRequest
from cost_pipeline.llm.usage import CACHE, NO_USAGE, Usage, estimate_usage, usage_from_metadata

BATCH = "batch"
SUCCEEDED = "JOB_STATE_SUCCEEDED"
BATCH_ATTEMPTS = uuid.UUID("5b0f7c8e-2d8e-4f4e-9a47-6c1e2f0b7d31")


class JobsPending(Exception):
    """The stage's jobs were not done within `max_wait_s`: they stay recorded, to be collected later."""

    def __init__(self, stage: str, names: list[str], waited_s: float):
        self.stage, self.names = stage, names
        super().__init__(f"{len(names)} {stage} batch job(s) still pending after {waited_s:.0f} s: {', '.join(names)}")


@dataclass(frozen=True)
class BatchCall:
    request: LlmRequest
    tag: CallTag
    text_hash: str


class BatchStage:
    """Runs one stage's calls through batch jobs with a session's client, cache, ledger and settings."""

    def __init__(self, session: GeminiSession, database: str, day: str, run_id: str, max_wait_s: float,
                 poll_s: float, max_requests: int, log: Callable[[str], None]):
        self.session, self.database, self.day, self.run_id = session, database, day, run_id
        self.max_wait_s, self.poll_s, self.max_requests, self.log = max_wait_s, poll_s, max_requests, log

    async def run(self, stage: str, calls: list[BatchCall]) -> dict[str, CallOutcome]:
        """Every call's outcome, keyed by call id; raises `JobsPending` when the jobs outlast `max_wait_s`."""
        session = self.session
        outcomes: dict[str, CallOutcome] = {}
        first: dict[str, BatchCall] = {}  # request hash -> the call that sends it
        for call in calls:
            request_hash = call.request.request_hash(session.endpoint_id)
            session.stats["calls"] += 1
            cached = session.cache.get(request_hash)
            if cached is not None:
                outcomes[call.tag.call_id] = _hit(call, request_hash, cached)
            else:
                first.setdefault(request_hash, call)
        answered = await self._jobs(stage, first) if first else {}
        for call in calls:
            if call.tag.call_id in outcomes:
                continue
            request_hash = call.request.request_hash(session.endpoint_id)
            outcome = answered[request_hash]
            if first[request_hash] is call:
                outcomes[call.tag.call_id] = outcome
            elif outcome.status == OK:  # an identical request: answered once, the rest from the cache
                outcomes[call.tag.call_id] = _hit(call, request_hash, CachedResponse(outcome.result, outcome.saved))
            else:
                outcomes[call.tag.call_id] = outcome
        session.stats["cache_hits"] += sum(o.cache_hit for o in outcomes.values())
        return outcomes

    async def _jobs(self, stage: str, first: dict[str, BatchCall]) -> dict[str, CallOutcome]:
        session = self.session
        hashes = sorted(first)
        model = first[hashes[0]].request.model
        digest = batch_jobs.request_set(hashes)
        parts = [hashes[i:i + self.max_requests] for i in range(0, len(hashes), self.max_requests)]
        known = {job.part: job for job in batch_jobs.find(self.database, self.day, stage, model, session.endpoint_id, digest)}
        names = []
        for number, part in enumerate(parts):
            if number in known:
                names.append(known[number].job_name)
                self.log(f"{stage}: resuming batch job {known[number].job_name} ({known[number].state}) for {len(part)} "
                         "requests: nothing is sent again")
                continue
            job = await session.client.aio.batches.create(
                model=model, src=[self._inlined(first[h]) for h in part],
                config={"display_name": f"cost-pipeline {self.day} {stage} {number + 1}/{len(parts)}"})
            # Recorded before any waiting: a kill from here on resumes this job.
            batch_jobs.record(self.database, job.name, self.day, stage, model, session.endpoint_id, digest, len(part),
                              number, self.run_id, job.state.name if job.state else "JOB_STATE_PENDING")
            names.append(job.name)
            self.log(f"{stage}: submitted batch job {job.name} with {len(part)} requests")
        done = await self._wait(stage, names)
        answered: dict[str, CallOutcome] = {}
        for job in done:
            answered.update(self._collect(job, first))
            batch_jobs.update(self.database, job.name, job.state.name, collected=True)
        for request_hash, call in first.items():  # asked, but no job answered it: failed, not billed; asked again later
            if request_hash not in answered:
                session.stats["failures"] += 1
                answered[request_hash] = CallOutcome(request_hash, call.request.stage, call.request.model, FAILED, None,
                                                     NO_USAGE, error="the batch job returned no answer for this request")
        return answered

    def _inlined(self, call: BatchCall) -> dict:
        config = self.session.content_config(call.request).model_copy(update={"automatic_function_calling": None})
        return {"contents": request_contents(call.request), "config": config,
                "metadata": {"key": call.request.request_hash(self.session.endpoint_id)}}

    async def _wait(self, stage: str, names: list[str]) -> list[types.BatchJob]:
        started = time.monotonic()
        while True:
            jobs = [await self._get(name) for name in names]
            if all(job.done for job in jobs):
                for job in jobs:
                    if job.state.name != SUCCEEDED:
                        batch_jobs.update(self.database, job.name, job.state.name)
                failed = [job.name for job in jobs if job.state.name != SUCCEEDED]
                if failed:
                    raise RuntimeError(f"{stage} batch job(s) {', '.join(failed)} ended without answers; "
                                       "a run of the day submits them again")
                return jobs
            waited = time.monotonic() - started
            if waited >= self.max_wait_s:
                for job in jobs:
                    batch_jobs.update(self.database, job.name, job.state.name if job.state else "JOB_STATE_PENDING")
                raise JobsPending(stage, names, waited)
            await asyncio.sleep(min(self.poll_s, max(0.0, self.max_wait_s - waited)))

    async def _get(self, name: str) -> types.BatchJob:
        """The job, or (when the provider no longer has it: expired, deleted, or a local server that ended with its
        run) a failure that marks it failed, so the next run of the day submits its requests anew."""
        try:
            return await self.session.client.aio.batches.get(name=name)
        except errors.ClientError as err:
            if err.code != 404:
                raise
            batch_jobs.update(self.database, name, "JOB_STATE_FAILED")
            raise RuntimeError(f"batch job {name} is gone at the provider; a run of the day submits it again") from None

    def _collect(self, job: types.BatchJob, first: dict[str, BatchCall]) -> dict[str, CallOutcome]:
        """Each inlined answer as a ledger attempt and a call outcome, keyed by request hash."""
        session, outcomes = self.session, {}
        finished = job.end_time.timestamp() if job.end_time else time.time()
        for answer in job.dest.inlined_responses or []:
            request_hash = (answer.metadata or {}).get("key")
            call = first.get(request_hash)
            if call is None:
                continue
            request, tag = call.request, call.tag
            # One id per (job, request): a job collected again (a kill before the cache was saved, a run without
            # the cache) records the same ledger rows, which the ledger ignores; the provider billed them once.
            attempt_id = uuid.uuid5(BATCH_ATTEMPTS, f"{job.name}\x1f{request_hash}").hex
            attempt = Attempt(attempt_id, tag.call_id, session.run_id, session.partition_date, tag.evaluation_id,
                              tag.turn_id, request.stage, request.model, session.endpoint_id, request_hash, 1,
                              job.create_time.timestamp() if job.create_time else finished, processing=BATCH)
            session.ledger.sent(attempt)
            if answer.error is not None or answer.response is None:
                code = answer.error.code if answer.error else None
                attempt.outcome, attempt.billed = ERROR, False
                attempt.reason = session.redact(f"batch error {code}: {answer.error.message if answer.error else 'no answer'}")[:200]
                session.ledger.done(attempt)
                session.stats["failures"] += 1
                outcomes[request_hash] = CallOutcome(request_hash, request.stage, request.model, FAILED, None, NO_USAGE,
                                                     attempts=1, error=attempt.reason, started_at=attempt.sent_at,
                                                     processing=BATCH)
                continue
            response = answer.response
            try:
                verdict = judge(request.stage, response)
            except Exception as err:  # billed whatever we make of it
                verdict = Verdict(False, None, f"unreadable answer: {type(err).__name__}: {err}"[:200])
            usage = usage_from_metadata(response.usage_metadata) or estimate_usage(request.text(), verdict.answer_text)
            attempt.http_status, attempt.billed, attempt.usage = 200, True, usage
            attempt.model_version, attempt.response_id = response.model_version, response.response_id
            attempt.outcome, attempt.reason = (ACCEPTED if verdict.accepted else REJECTED), verdict.reason
            attempt.latency_ms = (finished - attempt.sent_at) * 1000
            session.ledger.done(attempt)
            common = dict(attempts=1, billed_attempts=1, model_version=response.model_version,
                          latency_ms=attempt.latency_ms, started_at=attempt.sent_at, processing=BATCH)
            if verdict.accepted:
                session.cache.put(request_hash, call.text_hash, request.stage, request.model, verdict.result, usage)
                outcomes[request_hash] = CallOutcome(request_hash, request.stage, request.model, OK, verdict.result, usage,
                                                     saved=usage, **common)
            else:
                session.stats["failures"] += 1
                outcomes[request_hash] = CallOutcome(request_hash, request.stage, request.model, FAILED, None, usage,
                                                     rejected_attempts=1, error=f"rejected: {verdict.reason}", **common)
        session.stats["api_calls"] += len(outcomes)
        session.stats["api_finished"] += len(outcomes)
        return outcomes


def _hit(call: BatchCall, request_hash: str, cached: CachedResponse) -> CallOutcome:
    return CallOutcome(request_hash, call.request.stage, call.request.model, OK, cached.result, Usage(source=CACHE),
                       saved=cached.usage, cache_hit=True, latency_ms=0.0)
