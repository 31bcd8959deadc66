"""Calls through Gemini's Batch API: one stage of a day as a few jobs, billed at the batch price.

Why: the Batch API answers the same requests at half the input and output price, within
24 hours instead of seconds. A day becomes a small fixed number of jobs per stage (at most
`max_requests` requests each), not one per turn position.

How: requests the response cache answers are free; identical requests are sent once. First,
every job of this day and stage that an earlier run submitted and nobody collected is
waited for and collected, whatever it asked (a run killed while its job was pending, or a
day whose requests changed since): it was paid for, so each of its answers reaches the
ledger and the cache, and the requests it answered are not sent again. The rest go into new
jobs, inlined or, past `inline_limit_bytes`, as an uploaded JSON Lines file
(`batch_files.py`); each job is recorded (`batch_jobs.py`) before any waiting. The step
waits at most `max_wait_s`; past it, `JobsPending` names the jobs and the next run of the
day collects them. A collected job's answers become ledger attempts (`processing` batch,
billed whatever we make of them; an error inside the job is not billed) and accepted ones
enter the cache; both are checkpointed before the job is marked collected, so a kill at any
point neither loses a record of money nor pays for an answer twice. A rejected answer or
an error inside a job fails its call (a later run asks again).
"""

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.genai import errors, types

from cost_pipeline.gemini.answers import Verdict, judge
from cost_pipeline.gemini.attempts import ERROR, Attempt
from cost_pipeline.gemini.batch import files as batch_files
from cost_pipeline.gemini.batch import jobs as batch_jobs
from cost_pipeline.gemini.cache import CachedResponse
from cost_pipeline.gemini.client import FAILED, OK, CallOutcome, CallTag, GeminiSession, record_answer
from cost_pipeline.gemini.prompts import LlmRequest
from cost_pipeline.gemini.sdk_request import request_contents
from cost_pipeline.gemini.settings import BATCH
from cost_pipeline.gemini.usage import CACHE, NO_USAGE, Usage, answer_usage

SUCCEEDED = "JOB_STATE_SUCCEEDED"
BATCH_ATTEMPTS = uuid.UUID("5b0f7c8e-2d8e-4f4e-9a47-6c1e2f0b7d31")
CREATE_TIMEOUT_MS = 600_000


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
    context_hash: str | None = None


@dataclass(frozen=True)
class RequestKey:
    """What a job's answer must carry back to be recorded without the run that asked: the request, call and turn."""

    request_hash: str
    call_id: str = ""
    evaluation_id: str = ""
    turn_id: str = ""
    text_hash: str = ""
    context_hash: str | None = None

    def encode(self) -> str:
        return json.dumps(
            [self.request_hash, self.call_id, self.evaluation_id, self.turn_id, self.text_hash, self.context_hash]
        )

    @classmethod
    def decode(cls, key: str) -> "RequestKey":
        """A key this module wrote; a bare request hash (a job submitted before keys carried the call) also reads."""
        if not key.startswith("["):
            return cls(key)
        return cls(*json.loads(key))

    @classmethod
    def of(cls, call: BatchCall, endpoint: str) -> "RequestKey":
        return cls(
            call.request.request_hash(endpoint),
            call.tag.call_id,
            call.tag.evaluation_id,
            call.tag.turn_id,
            call.text_hash,
            call.context_hash,
        )


class BatchStage:
    """Runs one stage's calls through batch jobs with a session's client, cache, ledger and processing settings.

    `flush` writes what the session has recorded so far (ledger attempts, cache entries) and says whether all of it
    was written: a job is marked collected only then (else it joins `deferred`, for the step to mark after its
    final write).
    """

    def __init__(
        self,
        session: GeminiSession,
        log: Callable[[str], None],
        flush: Callable[[], Awaitable[bool]],
        work_folder: Path | None = None,
        deferred: list[str] | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        settings = session.settings
        self.session, self.day, self.run_id = session, session.partition_date, session.run_id
        self.database = settings.cache.database_file()
        self.max_wait_s, self.poll_s = settings.processing.batch_max_wait_s, settings.processing.batch_poll_s
        self.max_requests, self.inline_limit_bytes = (
            settings.processing.batch_max_requests,
            settings.processing.batch_inline_max_bytes,
        )
        self.flush, self.work_folder, self.log = flush, work_folder, log
        self.warn = warn or log
        self.deferred = deferred if deferred is not None else []
        """Jobs collected whose checkpoint was deferred (the file stayed locked): to be marked after the last write."""

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
        answered = await self._jobs(stage, first)
        for call in calls:
            if call.tag.call_id in outcomes:
                continue
            request_hash = call.request.request_hash(session.endpoint_id)
            outcome = answered[request_hash]
            if first[request_hash] is call:
                outcomes[call.tag.call_id] = outcome
            elif outcome.status == OK and outcome.result is not None:  # identical: answered once, the rest cached
                saved = outcome.saved or outcome.usage
                outcomes[call.tag.call_id] = _hit(call, request_hash, CachedResponse(outcome.result, saved))
            else:
                outcomes[call.tag.call_id] = outcome
        session.stats["cache_hits"] += sum(o.cache_hit for o in outcomes.values())
        return outcomes

    async def _jobs(self, stage: str, first: dict[str, BatchCall]) -> dict[str, CallOutcome]:
        session, deadline = self.session, time.monotonic() + self.max_wait_s
        answered: dict[str, CallOutcome] = {}
        earlier = batch_jobs.uncollected(self.database, self.day, stage, session.endpoint_id)
        if earlier:
            self.log(
                f"{stage}: collecting {len(earlier)} batch job(s) an earlier run submitted "
                f"({', '.join(job.job_name for job in earlier)}): what they answer is not sent again"
            )
            answered.update(await self._finish(stage, [job.job_name for job in earlier], first, deadline, resumed=True))
        # Asked now: what no earlier job answered, and what one answered with an error (not billed: ask again).
        remaining = sorted(
            request_hash
            for request_hash in first
            if request_hash not in answered or not answered[request_hash].billed_attempts
        )
        if remaining:
            parts = [remaining[i : i + self.max_requests] for i in range(0, len(remaining), self.max_requests)]
            names = [
                await self._submit(stage, [first[h] for h in part], number, len(parts))
                for number, part in enumerate(parts)
            ]
            answered.update(await self._finish(stage, names, first, deadline, resumed=False))
        for request_hash, call in first.items():  # asked, but no job answered it: failed, not billed; asked again later
            if request_hash not in answered:
                answered[request_hash] = CallOutcome(
                    request_hash,
                    call.request.stage,
                    call.request.model,
                    FAILED,
                    None,
                    NO_USAGE,
                    error="the batch job returned no answer for this request",
                )
        session.stats["failures"] += sum(outcome.status == FAILED for outcome in answered.values())
        return answered

    async def _submit(self, stage: str, calls: list[BatchCall], number: int, parts: int) -> str:
        """One job for `calls`, inlined or (past the inline limit) from an uploaded file; recorded before any wait."""
        session, model = self.session, calls[0].request.model
        client = session.client
        keyed = [(RequestKey.of(call, session.endpoint_id).encode(), self._inlined(call)) for call in calls]
        label = f"cost-pipeline {self.day} {stage} {number + 1}/{parts}"
        source: str | list[Any] = [{**inlined, "metadata": {"key": key}} for key, inlined in keyed]
        # Converted once, as the SDK would send them: measured for the inline limit, and written if past it.
        requests = [(key, batch_files.rest_request(client, inlined)) for key, inlined in keyed]
        if batch_files.inline_size(requests) > self.inline_limit_bytes * batch_files.INLINE_MARGIN:
            with tempfile.TemporaryDirectory(dir=self.work_folder) as folder:
                path = Path(folder) / "requests.jsonl"
                size = batch_files.write_requests(path, requests)
                uploaded = await client.aio.files.upload(
                    file=path, config={"mime_type": "jsonl", "display_name": label}
                )
            if not uploaded.name:
                raise ValueError("the Files API returned an upload without a name")
            self.log(f"{stage}: uploaded {len(calls)} requests ({size / 1e6:.1f} MB) as {uploaded.name}")
            source = uploaded.name
        # Up to 18 MB of inlined requests: the client's per-call timeout is for one answer, not for this upload.
        job = await client.aio.batches.create(
            model=model, src=source, config={"display_name": label, "http_options": {"timeout": CREATE_TIMEOUT_MS}}
        )
        # Recorded before any waiting: a kill from here on resumes this job.
        name = _job_name(job)
        batch_jobs.record(
            self.database,
            batch_jobs.SubmittedJob(
                name,
                self.day,
                stage,
                model,
                session.endpoint_id,
                batch_jobs.request_set([RequestKey.decode(key).request_hash for key, _ in keyed]),
                len(calls),
                number,
                self.run_id,
                _job_state(job),
            ),
        )
        self.log(
            f"{stage}: submitted batch job {name} with {len(calls)} requests"
            + (f" from {source}" if isinstance(source, str) else " inlined")
        )
        return name

    def _inlined(self, call: BatchCall) -> dict:
        config = self.session.content_config(call.request).model_copy(update={"automatic_function_calling": None})
        return {"contents": request_contents(call.request), "config": config}

    async def _finish(
        self, stage: str, names: list[str], first: dict[str, BatchCall], deadline: float, resumed: bool
    ) -> dict[str, CallOutcome]:
        """Wait for the jobs, then collect each one that succeeded: its answers recorded, flushed, then marked."""
        jobs = await self._wait(stage, names, deadline)
        failed = [name for name, job in jobs.items() if _job_state(job) != SUCCEEDED]
        if failed and not resumed:
            raise RuntimeError(
                f"{stage} batch job(s) {', '.join(failed)} ended without answers; "
                "a run of the day submits their requests again"
            )
        if failed:
            self.log(
                f"{stage}: earlier batch job(s) {', '.join(failed)} ended without answers; their requests are "
                "submitted anew"
            )
        answered: dict[str, CallOutcome] = {}
        for name, job in jobs.items():
            if name in failed or job is None:
                continue
            collected = await self._collect(job, stage, first)
            if collected is None:
                continue
            answered.update(collected)
            if await self.flush():  # the answers are in the cache and the ledger: a later run need not collect again
                batch_jobs.update(self.database, name, _job_state(job), collected=True)
            else:  # marked by the step once its last write has them (`batch_jobs.mark_collected`)
                self.deferred.append(name)
        return answered

    async def _wait(self, stage: str, names: list[str], deadline: float) -> dict[str, types.BatchJob | None]:
        """Each job once done (None when the provider no longer has it); raises `JobsPending` past the deadline."""
        started = time.monotonic()
        while True:
            jobs = {name: await self._get(name) for name in names}
            if all(job is None or job.done for job in jobs.values()):
                for name, job in jobs.items():
                    if job is not None and _job_state(job) != SUCCEEDED:
                        batch_jobs.update(self.database, name, _job_state(job))
                return jobs
            now = time.monotonic()
            if now >= deadline:
                for name, job in jobs.items():
                    if job is not None:
                        batch_jobs.update(self.database, name, _job_state(job))
                raise JobsPending(stage, names, now - started)
            await asyncio.sleep(min(self.poll_s, max(0.0, deadline - now)))

    async def _get(self, name: str) -> types.BatchJob | None:
        """The job, or None when the provider no longer has it (expired, deleted, or a local server that ended with
        its run): it is marked failed, so its requests are submitted anew."""
        try:
            return await self.session.client.aio.batches.get(name=name)
        except errors.ClientError as err:
            if err.code != 404:
                raise
            batch_jobs.update(self.database, name, "JOB_STATE_FAILED")
            self.log(f"batch job {name} is gone at the provider: marked failed")
            return None

    async def _collect(
        self, job: types.BatchJob, stage: str, first: dict[str, BatchCall]
    ) -> dict[str, CallOutcome] | None:
        """Each answer of the job as a ledger attempt (and, accepted, a cache entry); outcomes of this run's calls,
        keyed by request hash."""
        if job.dest and job.dest.file_name:
            with tempfile.TemporaryDirectory(dir=self.work_folder) as folder:
                path = Path(folder) / "answers.jsonl"
                try:
                    await self.session.client.aio.files.download(file=job.dest.file_name, destination=path)
                except errors.ClientError as err:
                    if err.code != 404:
                        raise
                    # Billed, but what it billed can no longer be read: said loudly, and its requests asked again.
                    batch_jobs.update(self.database, _job_name(job), "JOB_STATE_FAILED")
                    self.warn(
                        f"the result file {job.dest.file_name} of batch job {job.name} is gone (result "
                        "files expire): its answers were billed but cannot be recorded; its requests are asked "
                        "again"
                    )
                    return None
                return self._record(job, stage, first, batch_files.read_answers(path))
        return self._record(job, stage, first, batch_files.inline_answers(job))

    def _record(self, job: types.BatchJob, stage: str, first: dict[str, BatchCall], answers) -> dict[str, CallOutcome]:
        session, outcomes = self.session, {}
        model = (job.model or "").removeprefix("models/")
        finished = job.end_time.timestamp() if job.end_time else time.time()
        submitted = job.create_time.timestamp() if job.create_time else finished
        for answer in answers:
            key = RequestKey.decode(answer.key)
            call = first.get(key.request_hash)
            if call is not None:  # this run's call: its tag and request are the ones asked
                key = RequestKey.of(call, session.endpoint_id)
            # One id per (job, request): a job collected again (a kill before it was marked collected) records the
            # same ledger rows, which the ledger ignores; the provider billed them once.
            # Dated when the job finished, as its answers are billed then (not when it was submitted): the invoice's
            # day of a job that ran past midnight; its latency is from submission to that moment.
            attempt = Attempt(
                uuid.uuid5(BATCH_ATTEMPTS, f"{job.name}\x1f{key.request_hash}").hex,
                key.call_id,
                session.run_id,
                self.day,
                key.evaluation_id,
                key.turn_id,
                stage,
                call.request.model if call else model,
                session.endpoint_id,
                key.request_hash,
                1,
                finished,
                processing=BATCH,
            )
            session.ledger.sent(attempt)
            if answer.response is None:
                attempt.outcome, attempt.billed = ERROR, False
                attempt.reason = session.redact(f"batch error {answer.error_code}: {answer.error_message}")[:200]
                session.ledger.done(attempt)
                if call is not None:
                    outcomes[key.request_hash] = CallOutcome(
                        key.request_hash,
                        stage,
                        attempt.model,
                        FAILED,
                        None,
                        NO_USAGE,
                        attempts=1,
                        error=attempt.reason,
                        started_at=attempt.sent_at,
                        processing=BATCH,
                    )
                continue
            response = answer.response
            try:
                verdict = judge(stage, response)
            except Exception as err:  # billed whatever we make of it
                verdict = Verdict(False, None, f"unreadable answer: {type(err).__name__}: {err}"[:200])
            usage, unknown = answer_usage(
                response.usage_metadata, call.request.text() if call else "", verdict.answer_text
            )
            record_answer(attempt, response, usage, unknown, verdict)
            attempt.latency_ms = (finished - submitted) * 1000
            session.ledger.done(attempt)
            if verdict.accepted and verdict.result is not None and key.text_hash:  # (an older job's keys: no text)
                session.cache.put(
                    key.request_hash, key.text_hash, stage, attempt.model, verdict.result, usage, key.context_hash
                )
            if call is None:
                continue
            common: dict[str, Any] = dict(
                attempts=1,
                billed_attempts=1,
                model_version=attempt.model_version,
                served_tier=attempt.served_tier,
                billing_unknown_attempts=int(attempt.billed is None),
                latency_ms=attempt.latency_ms,
                started_at=attempt.sent_at,
                processing=BATCH,
            )
            if verdict.accepted:
                outcomes[key.request_hash] = CallOutcome(
                    key.request_hash, stage, attempt.model, OK, verdict.result, usage, saved=usage, **common
                )
            else:
                outcomes[key.request_hash] = CallOutcome(
                    key.request_hash,
                    stage,
                    attempt.model,
                    FAILED,
                    None,
                    usage,
                    rejected_attempts=1,
                    error=f"rejected: {verdict.reason}",
                    **common,
                )
        session.stats["api_calls"] += len(outcomes)
        session.stats["api_finished"] += len(outcomes)
        return outcomes


def _job_name(job: types.BatchJob) -> str:
    """A job's resource name, which the API always sets on a job it made."""
    if not job.name:
        raise ValueError("the Batch API returned a job without a name")
    return job.name


def _job_state(job: types.BatchJob | None, default: str = "JOB_STATE_PENDING") -> str:
    """A job's state by name; `default` while the API has not said."""
    return job.state.name if job is not None and job.state is not None else default


def _hit(call: BatchCall, request_hash: str, cached: CachedResponse) -> CallOutcome:
    return CallOutcome(
        request_hash,
        call.request.stage,
        call.request.model,
        OK,
        cached.result,
        Usage(source=CACHE),
        saved=cached.usage,
        cache_hit=True,
        latency_ms=0.0,
    )
