"""The Dagster internals `launch.py` needs, in one place: the only module that imports `dagster._*`.

Dagster has no public API yet that makes a run from a code location's remote job (so the UI
lists it under that location and job), records a backfill on the Backfills page, tells
whether a daemon serves the run queue, or which sensors are turned on. The CLI needs all four; these names do them as
Dagster's own UI and CLI do. A Dagster release that moves or changes one fails
`test_dagster_private.py`, which names what each must still offer, before any launch is tried.
"""

from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_representation.external_data import PartitionNamesSnap, PartitionSetExecutionParamSnap
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType
from dagster._core.utils import make_new_backfill_id
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.controller import get_daemon_statuses
from dagster._time import get_current_timestamp

__all__ = [
    "running_sensors",
    "BulkActionStatus",
    "ModuleTarget",
    "PartitionBackfill",
    "PartitionNamesSnap",
    "PartitionSetExecutionParamSnap",
    "WorkspaceProcessContext",
    "WorkspaceRequestContext",
    "get_current_timestamp",
    "get_daemon_statuses",
    "make_new_backfill_id",
]


def running_sensors(instance) -> set[str]:
    """The names of the sensors turned on on this instance (a sensor that ships stopped has no state until then)."""
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return {
        state.name for state in states if state.status in (InstigatorStatus.RUNNING, InstigatorStatus.DECLARED_IN_CODE)
    }
