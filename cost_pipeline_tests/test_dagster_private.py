"""What `launch.py` needs of Dagster's internals still holds in the installed release: each name, the members and
arguments it is used with. A release that moves or changes one fails here, before any launch is tried."""

import inspect

from cost_pipeline import dagster_private as private


def test_each_internal_name_offers_what_launch_uses():
    assert {"REQUESTED", "COMPLETED"} <= set(private.BulkActionStatus.__members__)
    backfill = inspect.signature(private.PartitionBackfill).parameters
    assert {"backfill_id", "status", "from_failure", "tags", "backfill_timestamp"} <= set(backfill)
    assert all(hasattr(private.PartitionBackfill, name) for name in ("with_status", "with_end_timestamp"))
    assert isinstance(private.make_new_backfill_id(), str)
    assert isinstance(private.get_current_timestamp(), float)
    daemon_statuses = inspect.signature(private.get_daemon_statuses).parameters
    assert {"instance", "daemon_types", "ignore_errors"} <= set(daemon_statuses)
    target = private.ModuleTarget(module_name="m", attribute=None, working_directory="/", location_name="l")
    assert (target.module_name, target.location_name) == ("m", "l")
    assert hasattr(private.WorkspaceProcessContext, "create_request_context")
    assert hasattr(private.PartitionNamesSnap, "partition_names")
    assert hasattr(private.PartitionSetExecutionParamSnap, "partition_data")


def test_running_sensors_reads_the_instance_sensor_states():
    import dagster as dg

    with dg.instance_for_test() as instance:
        assert private.running_sensors(instance) == set()
