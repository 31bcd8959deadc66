"""The code location loads the way `dagster dev` loads it, with every asset and job."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from cost_pipeline.definitions import defs

REPO = Path(__file__).parents[1]


def test_definitions_hold_the_assets_and_the_daily_job():
    keys = {spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()}
    assert {"raw_turns", "quarantined_turns"} <= keys
    job = defs.resolve_job_def("daily_pipeline")
    assert job.partitions_def is not None


def test_dagster_definitions_validate_passes_from_the_workspace():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
    ours = [line for line in result.stderr.splitlines() if "Warning" in line and "cost_pipeline" in line]
    assert ours == []


def test_settings_come_from_the_environment_as_env_vars(monkeypatch, tmp_path):
    from cost_pipeline import definitions

    monkeypatch.setenv("COST_PIPELINE_DB", str(tmp_path / "x.duckdb"))
    resources = definitions.local_resources()
    assert resources["io_manager"].database == dg.EnvVar("COST_PIPELINE_DB")
    monkeypatch.delenv("COST_PIPELINE_DB")
    assert definitions.local_resources()["io_manager"].database == "data/cost_pipeline.duckdb"
