"""The Kubernetes deployment's files, checked offline: the Helm values against the Dagster chart's own schema
(deploy/k8s/SOURCE.md says which version, and what else was checked by hand), the image's recipe against the
project it builds."""

import importlib.util
import json
import re

import yaml

from .conftest import REPO

K8S = REPO / "deploy" / "k8s"


def validator():
    spec = importlib.util.spec_from_file_location("validate_values", K8S / "validate_values.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_helm_values_fit_the_dagster_charts_schema_and_a_wrong_key_is_caught(tmp_path, capsys):
    check = validator()
    schema, values = str(K8S / "dagster-chart-values.schema.json"), str(K8S / "values.yaml")
    assert check.main([schema, values, "--partial"]) == 0, capsys.readouterr().out
    broken = yaml.safe_load((K8S / "values.yaml").read_text())
    broken["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = [{"name": "typo"}]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert check.main([schema, str(tmp_path / "broken.yaml"), "--partial"]) == 1
    assert "envSecret" in capsys.readouterr().out


def test_each_run_is_a_pod_the_runs_are_queued_and_secrets_come_from_kubernetes():
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert values["postgresql"]["enabled"] is False, "the instance's PostgreSQL is the team's own, like the lake's"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    secrets = {each["name"] for each in deployment["envSecrets"]}
    launcher_secrets = {each["name"] for each in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]}
    assert secrets == launcher_secrets, "a run pod sees the secrets the code location sees"
    (example,) = [
        each
        for each in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
        if each and each["metadata"]["name"] in secrets
    ]
    assert {"COST_PIPELINE_WAREHOUSE", "COST_PIPELINE_LAKE_DATA"} <= set(example["stringData"])
    assert "COST_PIPELINE_WAREHOUSE" not in json.dumps(deployment.get("env", {})), "the catalog DSN is a secret"


def test_the_image_installs_the_project_at_build_time_and_pins_dagster_as_the_project_does():
    dockerfile = (REPO / "Dockerfile").read_text()
    installed = re.search(r"ARG DAGSTER_VERSION=([\d.]+)", dockerfile)
    assert installed, "the image pins its Dagster release"
    import dagster

    assert installed.group(1) == dagster.__version__, "the image runs the Dagster the tests ran"
    assert "pip install ." in dockerfile and "cost_pipeline.definitions" in dockerfile
