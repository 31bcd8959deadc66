"""Gemini on Vertex AI: the endpoint as google-genai's conventions set it, labels on every request, batch refused."""

from datetime import date

import dagster as dg
import pytest

from cost_pipeline.defs.resources import CostSettings
from cost_pipeline.gemini.labels import check_labels, label_safe, request_labels
from cost_pipeline.gemini.settings import EndpointSettings, GeminiSettings, ProcessingSettings
from cost_pipeline.ingest.synthetic import generate

from .conftest import materialize_day

DAY = date(2026, 11, 2)
VERTEX_VARIABLES = (
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_VERTEX_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
)


@pytest.fixture
def clean_environment(monkeypatch):
    for name in VERTEX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_environment_switches_to_vertex_as_google_genai_reads_it(clean_environment):
    assert not EndpointSettings().on_vertex() and EndpointSettings().needs_local_server()
    clean_environment.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    clean_environment.setenv("GOOGLE_CLOUD_PROJECT", "acme-evals")
    endpoint = EndpointSettings()
    assert endpoint.on_vertex() and not endpoint.needs_local_server()
    assert endpoint.endpoint_id() == "vertex:acme-evals/global"  # the location defaults to global
    clean_environment.setenv("GOOGLE_GENAI_USE_ENTERPRISE", "false")  # the SDK reads this one first
    assert not EndpointSettings().on_vertex()
    clean_environment.delenv("GOOGLE_GENAI_USE_ENTERPRISE")
    clean_environment.setenv("GOOGLE_CLOUD_LOCATION", "europe-west4")
    clean_environment.setenv("GOOGLE_VERTEX_BASE_URL", "http://127.0.0.1:9")
    settings = GeminiSettings(endpoint=EndpointSettings())
    assert settings.endpoint_id() == "vertex:acme-evals/europe-west4@http://127.0.0.1:9"
    described = settings.describe_endpoint()
    assert "Vertex AI, project acme-evals, location europe-west4" in described
    assert "Application Default Credentials" in described


def test_express_mode_needs_only_a_key_and_a_project_less_vertex_without_one_is_refused(clean_environment):
    clean_environment.setenv("GOOGLE_GENAI_USE_VERTEXAI", "1")
    assert EndpointSettings().problem() == (
        "Vertex AI is on (GOOGLE_GENAI_USE_ENTERPRISE or GOOGLE_GENAI_USE_VERTEXAI) but no project is set "
        "(GOOGLE_CLOUD_PROJECT) and no API key for express mode: set the project, with credentials from Application "
        "Default Credentials"
    )
    clean_environment.setenv("GOOGLE_API_KEY", "express-key-not-logged")
    endpoint = EndpointSettings()
    assert endpoint.problem() is None and endpoint.express_mode() and endpoint.endpoint_id() == "vertex:express"
    described = GeminiSettings(endpoint=endpoint).describe_endpoint()
    assert "express mode" in described and "express-key-not-logged" not in described


def test_labels_follow_googles_rules_and_configured_ones_are_checked_not_rewritten():
    labels = request_labels("function", "Eval-Voice Assistant/v1", "2026-11-02", {"team": "evals"})
    assert labels == {
        "pipeline": "cost_pipeline",
        "stage": "function",
        "evaluation": "eval-voice-assistant-v1",
        "partition": "2026-11-02",
        "team": "evals",
    }
    assert len(label_safe("x" * 100)) == 63
    assert check_labels({"team": "evals", "cost-center": "r_and_d"}) == []
    assert check_labels({"Team": "x"}) and check_labels({"1team": "x"}) and check_labels({"team": "A B"})
    assert check_labels({"stage": "mine"}) == [
        "label 'stage' is set by the pipeline itself (pipeline, stage, evaluation, partition)"
    ]
    assert check_labels({f"k{n}": "v" for n in range(61)})[-1].startswith("61 labels configured: at most 60")


def test_batch_mode_on_vertex_refuses_in_one_sentence_before_any_call(
    landing_root, database, model_server, clean_environment
):
    generate(landing_root, DAY, days=1, turns_per_day=20, seed=2)
    with pytest.raises(dg.DagsterResourceFunctionError) as refused:
        materialize_day(
            DAY,
            landing_root,
            database,
            model_server,
            gemini={
                "endpoint": {"base_url": None, "vertexai": True, "project": "acme", "vertex_base_url": "http://x"},
                "processing": {"mode": "batch"},
            },
        )
    failure = refused.value.__cause__
    assert isinstance(failure, dg.Failure) and failure.description.startswith(
        "batch mode is not available on Vertex AI here: Vertex batch prediction reads its requests from Cloud Storage"
    )
    assert model_server.requests() == [], "nothing was sent"
    assert (
        ProcessingSettings(mode="batch")
        and GeminiSettings(processing=ProcessingSettings(mode="batch")).problem() is None
    )


def test_labels_that_break_googles_rules_fail_the_step_with_the_reason(landing_root, database, model_server, tmp_path):
    generate(landing_root, DAY, days=1, turns_per_day=20, seed=2)
    costs = tmp_path / "costs.toml"
    costs.write_text('[labels]\nTeam = "evals"\n')
    result = materialize_day(
        DAY, landing_root, database, model_server, costs=CostSettings(config_file=str(costs)), raise_on_error=False
    )
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "turns_through_gemini"
    assert "[labels] in" in failure.step_failure_data.user_failure_data.description
    assert model_server.requests() == []
