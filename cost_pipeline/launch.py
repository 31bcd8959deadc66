"""Launch the project's jobs on its Dagster instance the way the UI does, and wait for them.

Why not `execute_in_process`: such a run has no code-location origin, so the UI's Overview
timeline and a job's run history never list it. A run made here is created from the remote
job of the project's code location (`cost_pipeline`, the one `dagster dev` loads, with the
working directory as its working directory, so relative paths mean what they mean here), with the tags
the UI and Dagster's own backfills give it (a backfill also gets its record on the Backfills
page). When a daemon is serving the instance's run queue (`dagster dev` is up), the runs are
submitted to that queue, so its limit of runs at once holds; otherwise they are launched with
the instance's run launcher here, at most that limit at a time.

Guarantee: each requested partition gets exactly one run, and `Launcher.launch` returns once
every run it made has finished, with each run's status and the one-line reason of a failure.
Interrupted (Ctrl-C), it cancels the runs it made that have not finished, and says so.
"""

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from cost_pipeline.dagster_private import (
    BulkActionStatus,
    ModuleTarget,
    PartitionBackfill,
    PartitionNamesSnap,
    PartitionSetExecutionParamSnap,
    WorkspaceProcessContext,
    WorkspaceRequestContext,
    get_current_timestamp,
    get_daemon_statuses,
    make_new_backfill_id,
)

PROJECT_HOME = ".dagster_home"
# The same module and name as pyproject.toml's [tool.dagster] and workspace.yaml (a test holds them equal): a run
# made here is listed under the code location and job history the UI shows.
DEFINITIONS_MODULE = "cost_pipeline.definitions"
CODE_LOCATION = "cost_pipeline"
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
PROGRESS_EVERY_S = 10.0
"""How often a wait says how its unfinished runs stand."""


class LaunchError(Exception):
    """A launch that cannot start: a code location that fails to load, a job or day it does not have."""


@dataclass(frozen=True)
class FinishedRun:
    """One run's outcome, as a person reads it in the run list."""

    run_id: str
    job_name: str
    partition: str | None
    status: str
    seconds: float
    reason: str | None  # why a failed run failed, one line; None otherwise
    note: str | None = None  # what a person should know about a successful run (see `Launcher.annotate`)

    @property
    def succeeded(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS.value

    def line(self) -> str:
        what = self.partition or self.job_name
        tail = f": {self.reason or self.note}" if self.reason or self.note else ""
        return f"  {what:<12} {self.status:<8} {self.seconds:6.1f} s  run {self.run_id[:8]}{tail}"


def project_home() -> Path:
    """`DAGSTER_HOME` when set, else the project's `.dagster_home` (in the working directory), made absolute."""
    return Path(os.environ.get("DAGSTER_HOME") or PROJECT_HOME).resolve()


@contextmanager
def project_instance() -> Iterator[dg.DagsterInstance]:
    """The instance the UI reads: `DAGSTER_HOME` is set for this process (and the code server it starts)."""
    home = project_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        yield instance


def queue_is_served(instance: dg.DagsterInstance) -> bool:
    """Whether a daemon with a recent heartbeat is dequeuing this instance's runs (as under `dagster dev`)."""
    if QUEUE_DAEMON not in instance.get_required_daemon_types():
        return False
    status = get_daemon_statuses(instance, [QUEUE_DAEMON], ignore_errors=True)[QUEUE_DAEMON]
    return bool(status.healthy)


def runs_at_once(instance: dg.DagsterInstance) -> int:
    """The instance's limit of runs in progress (`concurrency: runs: max_concurrent_runs`).

    Read from the instance's concurrency config: the queued coordinator's own config still
    says its default (10) when the limit is set under `concurrency`.
    """
    queue = instance.get_concurrency_config().run_queue_config
    limit = queue.max_concurrent_runs if queue else 1
    return limit if limit >= 1 else (1_000_000 if limit < 0 else 1)  # -1: no limit; 0 (queue paused): one


class Launcher:
    """Runs of one code location, created as the UI creates them. Use as a context manager."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        say: Callable[[str], None] = print,
        annotate: Callable[[dg.DagsterInstance, str], str | None] = lambda instance, run_id: None,
        progress: Callable[[list[str]], Mapping[str, str]] | None = None,
    ):
        self.instance = instance
        self.say = say
        self.annotate = annotate  # a note on a successful run, from its events
        self.progress = progress  # what unfinished runs have done so far, by run id (their spend, say)
        target = ModuleTarget(
            module_name=DEFINITIONS_MODULE, attribute=None, working_directory=os.getcwd(), location_name=CODE_LOCATION
        )
        self._process = WorkspaceProcessContext(
            instance, target, version=dg.__version__, code_server_log_level="WARNING", read_only=False
        )

    def __enter__(self) -> "Launcher":
        self._process.__enter__()
        self.workspace: WorkspaceRequestContext = self._process.create_request_context()
        name = CODE_LOCATION
        if self.workspace.has_code_location_error(name):
            error = self.workspace.get_code_location_error(name)
            raise LaunchError(
                f"code location {name} failed to load: {error.message.strip() if error else 'unknown error'}"
            )
        self.location = self.workspace.get_code_location(name)
        (self.repository,) = self.location.get_repositories().values()
        return self

    def __exit__(self, *exc) -> None:
        self._process.__exit__(*exc)

    def launch(
        self,
        job_name: str,
        partitions: Sequence[str] | None = None,
        backfill: bool = False,
        tags: Mapping[str, str] | None = None,
        console_level: str = "INFO",
        partition_tags: Mapping[str, Mapping[str, str]] | None = None,
    ) -> list[FinishedRun]:
        """One run per partition of `job_name` (one run when unpartitioned); waits for all and returns them.

        `backfill=True` records a Dagster backfill and tags its runs with its id (a day that
        never landed is then written empty instead of failing, see `defs/ingest/assets.py`);
        `partition_tags` adds tags to one partition's run (its forecast, say).
        """
        job = self.repository.get_full_job(job_name)
        params: Mapping[Any, tuple[Mapping, Mapping]] = (
            self._partition_params(job_name, partitions) if partitions is not None else {None: ({}, {})}
        )
        backfill_tags: Mapping[str, str] = {}
        record = None
        if backfill:
            record = PartitionBackfill(
                backfill_id=make_new_backfill_id(),
                partition_set_origin=self._partition_set(job_name).get_remote_origin(),
                status=BulkActionStatus.REQUESTED,
                partition_names=list(params),
                from_failure=False,
                reexecution_steps=None,
                tags=dict(tags or {}),
                backfill_timestamp=get_current_timestamp(),
            )
            self.instance.add_backfill(record)
            backfill_tags = dg.DagsterRun.tags_for_backfill_id(record.backfill_id)
        console = {"loggers": {"console": {"config": {"log_level": console_level}}}}  # the event log keeps every level
        extra = partition_tags or {}
        runs = {
            partition: self._create_run(
                job,
                {**run_config, **console},
                {**job.tags, **own_tags, **backfill_tags, **(tags or {}), **extra.get(partition, {})},
            )
            for partition, (own_tags, run_config) in params.items()
        }
        if record is not None:  # Dagster's own CLI backfill marks it so once its runs exist: they carry the rest.
            self.instance.update_backfill(
                record.with_status(BulkActionStatus.COMPLETED).with_end_timestamp(get_current_timestamp())
            )
        served = queue_is_served(self.instance)
        limit = runs_at_once(self.instance)
        how = (
            "submitted to the run queue that dagster dev's daemon serves"
            if served
            else f"launched here (no daemon is serving the run queue), {limit} at a time"
        )
        label = f"backfill {record.backfill_id} of " if record else ""
        self.say(f"{label}{len(runs)} run(s) of {job_name} on the instance at {self.instance.root_directory}, {how}:")
        return self._wait(runs, limit, served)

    def _partition_set(self, job_name: str):
        for partition_set in self.repository.get_partition_sets():
            if partition_set.job_name == job_name:
                return partition_set
        raise LaunchError(f"job {job_name} is not partitioned")

    def _partition_params(self, job_name: str, partitions: Sequence[str]) -> dict[str, tuple[Mapping, Mapping]]:
        """Tags and run config per partition, from the code location (as a backfill from the UI gets them)."""
        names = self.location.get_partition_names_from_repo(self.repository.handle, job_name)
        if not isinstance(names, PartitionNamesSnap):
            raise LaunchError(f"could not list the partitions of {job_name}: {names.error}")
        known = set(names.partition_names)
        outside = [partition for partition in partitions if partition not in known]
        if outside:
            span = f"{names.partition_names[0]} to {names.partition_names[-1]}" if names.partition_names else "none yet"
            raise LaunchError(
                f"{', '.join(outside)} not a partition of {job_name} (partitions: {span}; "
                "the first is COST_PIPELINE_START)"
            )
        snap = self.location.get_partition_set_execution_params(
            self.repository.handle, self._partition_set(job_name).name, list(partitions), self.instance
        )
        if not isinstance(snap, PartitionSetExecutionParamSnap):
            raise LaunchError(f"could not build the runs of {job_name}: {snap.error}")
        by_name = {data.name: (data.tags or {}, data.run_config or {}) for data in snap.partition_data}
        return {partition: by_name[partition] for partition in partitions}

    def _create_run(self, job, run_config: Mapping, tags: Mapping[str, str]) -> dg.DagsterRun:
        plan = self.location.get_execution_plan(
            job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        return self.instance.create_run(
            job_name=job.name,
            run_id=None,
            run_config=run_config,
            resolved_op_selection=None,
            step_keys_to_execute=None,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags=tags,
            job_snapshot=job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=job.parent_job_snapshot,
            remote_job_origin=job.get_remote_origin(),
            job_code_origin=job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=self.repository.asset_graph,
        )

    def _wait(self, runs: Mapping[Any, dg.DagsterRun], limit: int, served: bool) -> list[FinishedRun]:
        waiting = list(runs.values())
        started: dict[str, float] = {}
        finished: dict[str, FinishedRun] = {}
        partition_of = {run.run_id: partition for partition, run in runs.items()}
        watch = _Watch(self.say, self.progress)
        try:
            while len(finished) < len(runs):
                if served:
                    while waiting:
                        self.instance.submit_run(waiting.pop(0).run_id, self.workspace)
                else:
                    while waiting and len(started) - len(finished) < limit:
                        run = waiting.pop(0)
                        started[run.run_id] = time.monotonic()
                        self.instance.launch_run(run.run_id, self.workspace)
                records = self.instance.get_run_records(dg.RunsFilter(run_ids=list(partition_of)))
                for record in records:
                    run = record.dagster_run
                    if run.is_finished and run.run_id not in finished:
                        finished[run.run_id] = self._finished(record, partition_of[run.run_id])
                        self.say(finished[run.run_id].line())
                watch.tick([record for record in records if record.dagster_run.run_id not in finished], partition_of)
                if len(finished) < len(runs):
                    time.sleep(0.5)
        except KeyboardInterrupt:
            unfinished = [run_id for run_id in partition_of if run_id not in finished]
            never_launched = {run.run_id for run in waiting}
            for run_id in unfinished:
                if run_id in never_launched:  # nothing to stop: straight to CANCELED, not left CANCELING
                    if (never_run := self.instance.get_run_by_id(run_id)) is not None:
                        self.instance.report_run_canceled(never_run)
                else:
                    self.instance.run_coordinator.cancel_run(run_id)
            self.say(f"interrupted: canceled {len(unfinished)} unfinished run(s)")
            raise
        return [finished[run.run_id] for run in runs.values()]

    def _finished(self, record, partition: str | None) -> FinishedRun:
        run = record.dagster_run
        seconds = (record.end_time or 0) - (record.start_time or record.create_timestamp.timestamp())
        succeeded = run.status == dg.DagsterRunStatus.SUCCESS
        return FinishedRun(
            run.run_id,
            run.job_name,
            partition,
            run.status.value,
            max(seconds, 0.0),
            None if succeeded else failure_reason(self.instance, run.run_id),
            self.annotate(self.instance, run.run_id) if succeeded else None,
        )


class _Watch:
    """Says, every `PROGRESS_EVERY_S`, how each unfinished run stands (status, time, what it has done so far).

    A run's line is repeated only when it changed, or once a minute, so a long wait stays readable.
    """

    def __init__(self, say: Callable[[str], None], progress: Callable[[list[str]], Mapping[str, str]] | None):
        self.say, self.progress = say, progress
        self.last_tick = time.monotonic() - PROGRESS_EVERY_S + 2.0  # the first word comes after 2 s
        self.said: dict[str, tuple[str, float]] = {}  # run id -> (what was said, when)

    def tick(self, unfinished: list, partition_of: Mapping[str, str | None]) -> None:
        now = time.monotonic()
        if not unfinished or now - self.last_tick < PROGRESS_EVERY_S:
            return
        self.last_tick = now
        running = [r.dagster_run.run_id for r in unfinished if r.dagster_run.status == dg.DagsterRunStatus.STARTED]
        try:
            so_far = self.progress(running) if self.progress and running else {}
        except Exception as error:  # progress informs; it never stops the wait
            so_far = {run_id: f"(progress unavailable: {type(error).__name__})" for run_id in running}
        for record in unfinished:
            run = record.dagster_run
            status, done = run.status.value, so_far.get(run.run_id, "")
            previous = self.said.get(run.run_id)
            if previous and previous[0] == f"{status} {done}" and now - previous[1] < 60:
                continue
            self.said[run.run_id] = (f"{status} {done}", now)
            seconds = max(time.time() - (record.start_time or record.create_timestamp.timestamp()), 0.0)
            label = partition_of[run.run_id] or run.job_name
            self.say(f"  {label:<12} {status:<8} {seconds:6.1f} s{f'  so far: {done}' if done else ''}")


def failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first line a person needs: the failed step and its `Failure` description (or error), else the run's
    message."""
    for of_type, pick in (
        (dg.DagsterEventType.STEP_FAILURE, _step_failure),
        (dg.DagsterEventType.RUN_FAILURE, _run_failure),
    ):
        records = instance.get_records_for_run(run_id, of_type=of_type, limit=1).records
        if records:
            return pick(records[0].event_log_entry)
    return "no failure event recorded (canceled or killed?)"


def _step_failure(entry) -> str:
    event = entry.dagster_event
    data = event.step_failure_data
    user = data.user_failure_data
    text = (user.description if user and user.description else None) or (data.error.message if data.error else "failed")
    return f"{event.step_key}: {text.strip().splitlines()[0]}"


def _run_failure(entry) -> str:
    return (entry.dagster_event.message or entry.user_message or "failed").strip().splitlines()[0]
