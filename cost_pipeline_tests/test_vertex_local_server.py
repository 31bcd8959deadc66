"""The shipped local server speaks Vertex AI to the real google-genai client (`vertexai=True`), offline.

Credentials come from a real google-auth flow: an `external_account_authorized_user` file
(the kind a workforce-identity user's `gcloud auth application-default login` writes) whose
token URL is the server's `/token`, found by `google.auth.default()` through
GOOGLE_APPLICATION_CREDENTIALS. The Vertex answer shape is checked against recorded Vertex
bodies (`fixtures/responses/vertex_*.json`: `trafficType` in `usageMetadata`, `createTime`,
`responseId`), the bill against Vertex AI's own SKU wording (sources in `vertex_sku`).
"""

import asyncio
import base64
import csv
import io
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import genai_prices
import google.auth
import google.oauth2.credentials
import pytest
from google import genai
from google.auth.transport.requests import Request
from google.genai import errors, types

from cost_pipeline.gemini.local_endpoint import (
    LOCAL_CLIENT_ID,
    LOCAL_CLIENT_SECRET,
    LOCAL_REFRESH_TOKEN,
    SERVER_MODULE,
    local_credentials_file,
)
from cost_pipeline.model_server.server import count_tokens
from cost_pipeline.money.billing_export import read_export

PROJECT, LOCATION, MODEL = "cost-pipeline-vertex", "us-central1", "gemini-2.5-flash-lite"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
TEXT = "um so i i think we should ship it"
VERTEX_ROUTE = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}"
ADMIN_PATHS = (
    "/admin/stats",
    "/admin/requests",
    "/admin/billing",
    "/admin/config",
    "/admin/billing/export",
    "/admin/billing/export?surface=vertex",
)


@pytest.fixture(autouse=True)
def _no_ambient_google_settings(monkeypatch):
    """Only what a test sets reaches the client: no API key, project or base URL from the environment."""
    for name in (
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_VERTEX_BASE_URL",
        "GOOGLE_GENAI_API_VERSION",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def credentials_file(tmp_path, model_server, monkeypatch) -> Path:
    """Application default credentials pointing at the test's server, as `google.auth.default()` finds them."""
    path = local_credentials_file(tmp_path, model_server.url)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path


def vertex_client(url: str, credentials=None) -> genai.Client:
    """google-genai on Vertex AI at `url`; without `credentials` it loads application default credentials."""
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=credentials,
        http_options=types.HttpOptions(base_url=url, timeout=5000),
    )


def generate(client: genai.Client, text: str = TEXT, **config) -> types.GenerateContentResponse:
    return client.models.generate_content(model=MODEL, contents=text, config=types.GenerateContentConfig(**config))


def fresh_token(credentials_path: Path) -> str:
    """An access token the server issued, by google-auth's own refresh of the credentials file."""
    credentials, _ = google.auth.load_credentials_from_file(str(credentials_path), scopes=[CLOUD_PLATFORM])
    credentials.refresh(Request())
    return credentials.token


def post(url: str, body: dict, token: str | None = None) -> dict:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def export(url: str, surface: str | None = None) -> list[dict]:
    query = f"?surface={surface}" if surface else ""
    with urllib.request.urlopen(f"{url}/admin/billing/export{query}", timeout=10) as response:
        return list(csv.DictReader(io.StringIO(response.read().decode())))


def test_generate_content_answers_in_vertex_shape_at_the_path_google_genai_builds(model_server, credentials_file):
    client = vertex_client(model_server.url)
    response = generate(client)

    usage = response.usage_metadata
    assert usage.prompt_token_count == count_tokens(TEXT)
    assert usage.candidates_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.traffic_type == types.TrafficType.ON_DEMAND
    assert abs(response.create_time - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert re.fullmatch(r"[A-Za-z0-9_-]{23}", response.response_id)
    assert response.model_version == MODEL
    assert json.loads(response.text)["cleaned_text"] == "So I think we should ship it."

    (request,) = model_server.requests()
    assert request["path"] == f"{VERTEX_ROUTE}:generateContent"
    assert (request["surface"], request["project"], request["location"]) == ("vertex", PROJECT, LOCATION)
    assert request["authorization"] is True
    assert model_server.stats()["tokens_issued"] == 1  # google-auth refreshed once, at the server's /token

    async def asynchronously():
        return await client.aio.models.generate_content(model=MODEL, contents=TEXT)

    assert asyncio.run(asynchronously()).usage_metadata.traffic_type == types.TrafficType.ON_DEMAND


def test_the_developer_api_answers_as_before_and_stays_off_the_vertex_bill(model_server):
    client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=model_server.url, timeout=5000))
    response = generate(client)

    assert response.usage_metadata.traffic_type is None
    assert response.create_time is None
    assert response.response_id.startswith("local-")
    (record,) = model_server.billing()
    assert record["surface"] == "gemini-api" and "labels" not in record and "traffic_type" not in record
    assert export(model_server.url, "vertex") == []
    assert {row["service.description"] for row in export(model_server.url)} == {"Gemini API"}


def test_labels_are_recorded_with_each_call(model_server, credentials_file):
    client = vertex_client(model_server.url)
    sent = [{"pipeline": "cost_pipeline", "stage": stage} for stage in ("clean", "classify")]
    for labels in sent:
        generate(client, labels=labels)

    assert [record["labels"] for record in model_server.billing()] == sent
    assert [request["labels"] for request in model_server.requests()] == sent
    assert [request["body"]["labels"] for request in model_server.requests()] == sent  # top level, as Vertex takes them


def test_labels_breaking_googles_rules_are_refused(model_server, credentials_file):
    with pytest.raises(errors.ClientError) as refused:
        generate(vertex_client(model_server.url), labels={"Stage": "Clean"})

    assert refused.value.code == 400 and refused.value.status == "INVALID_ARGUMENT"
    assert model_server.billing() == []


def test_count_tokens_counts_for_free(model_server, credentials_file):
    client = vertex_client(model_server.url)  # held: a Client closes its connections when collected
    counted = client.models.count_tokens(model=MODEL, contents=TEXT)

    assert counted.total_tokens == count_tokens(TEXT)
    assert model_server.billing() == []
    (request,) = model_server.requests()
    assert request["path"] == f"{VERTEX_ROUTE}:countTokens" and request["authorization"] is True


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "when": {"type": "string"}},
    "required": ["city"],
}


def test_a_declared_tool_is_called_with_its_snake_case_schema(model_server, credentials_file):
    declaration = types.FunctionDeclaration(
        name="get_weather", description="The weather forecast for a city.", parameters_json_schema=WEATHER_SCHEMA
    )
    response = generate(
        vertex_client(model_server.url),
        "what's the weather in Lisbon tomorrow",
        tools=[types.Tool(function_declarations=[declaration])],
    )

    (call,) = response.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Lisbon", "when": "tomorrow"})
    (sent,) = model_server.requests()[0]["body"]["tools"][0]["functionDeclarations"]
    assert sent["parameters_json_schema"] == WEATHER_SCHEMA  # google-genai's Vertex spelling, read as the schema


@pytest.mark.parametrize("spelling", ["parameters_json_schema", "parametersJsonSchema"])
def test_both_spellings_of_a_json_schema_are_read(model_server, credentials_file, spelling):
    body = {
        "contents": [{"role": "user", "parts": [{"text": "what's the weather in Lisbon tomorrow"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather", spelling: WEATHER_SCHEMA}]}],
    }
    answer = post(f"{model_server.url}{VERTEX_ROUTE}:generateContent", body, fresh_token(credentials_file))

    (part,) = answer["candidates"][0]["content"]["parts"]
    assert part["functionCall"] == {"name": "get_weather", "args": {"city": "Lisbon", "when": "tomorrow"}}


@pytest.mark.parametrize(
    "rate, traffic",
    [
        ("rate_flex", types.TrafficType.ON_DEMAND_FLEX),
        ("rate_priority", types.TrafficType.ON_DEMAND_PRIORITY),
        ("rate_provisioned", types.TrafficType.PROVISIONED_THROUGHPUT),
    ],
)
def test_an_injected_share_is_served_and_billed_at_its_traffic_type(model_server, credentials_file, rate, traffic):
    model_server.configure(**{rate: 1.0})
    response = generate(vertex_client(model_server.url))

    assert response.usage_metadata.traffic_type == traffic
    assert [record["traffic_type"] for record in model_server.billing()] == [traffic.value]


def test_traffic_types_come_in_their_shares_and_repeat_under_the_seed(model_server, credentials_file):
    client = vertex_client(model_server.url)

    def draw() -> list[types.TrafficType]:
        model_server.configure(rate_flex=0.3, rate_priority=0.3, rate_provisioned=0.2, seed=7)
        return [generate(client).usage_metadata.traffic_type for _ in range(30)]

    first = draw()
    assert draw() == first
    assert set(first) == {
        types.TrafficType.ON_DEMAND,
        types.TrafficType.ON_DEMAND_FLEX,
        types.TrafficType.ON_DEMAND_PRIORITY,
        types.TrafficType.PROVISIONED_THROUGHPUT,
    }


def test_a_vertex_call_without_a_token_the_server_issued_is_refused(model_server, credentials_file):
    with pytest.raises(urllib.error.HTTPError) as no_header:
        post(f"{model_server.url}{VERTEX_ROUTE}:generateContent", {"contents": [{"parts": [{"text": TEXT}]}]})
    assert no_header.value.code == 401
    error = json.loads(no_header.value.read())["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED") and error["message"]

    forged = google.oauth2.credentials.Credentials(token="ya29.never-issued-here")
    with pytest.raises(errors.ClientError) as never_issued:
        generate(vertex_client(model_server.url, credentials=forged))
    assert (never_issued.value.code, never_issued.value.status) == (401, "UNAUTHENTICATED")

    generate(vertex_client(model_server.url))  # application default credentials, refreshed at /token
    requests = model_server.requests()
    assert [request["authorization"] for request in requests] == [False, True, True]
    assert [request.get("status") for request in requests] == [401, 401, None]
    assert len(model_server.billing()) == 1


def test_the_vertex_bill_has_vertex_ai_skus_a_line_per_tier_and_the_labels(model_server, credentials_file, tmp_path):
    client = vertex_client(model_server.url)
    served = {
        "clean": {},
        "flex": {"rate_flex": 1.0},
        "priority": {"rate_priority": 1.0},
        "provisioned": {"rate_provisioned": 1.0},
    }
    for stage, rates in served.items():
        model_server.configure(**{"rate_flex": 0.0, "rate_priority": 0.0, "rate_provisioned": 0.0, **rates})
        generate(client, labels={"pipeline": "cost_pipeline", "stage": stage})
    generate(genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=model_server.url)))

    rows = export(model_server.url, "vertex")
    assert {(r["service.id"], r["service.description"], r["usage.unit"], r["currency"]) for r in rows} == {
        ("C7E2-9256-1C43", "Vertex AI", "count", "USD")
    }
    assert {(r["project.id"], r["location.location"]) for r in rows} == {(PROJECT, LOCATION)}
    lines = {(r["sku.description"], r["labels"]): r for r in rows}
    prompt = count_tokens(TEXT)
    output = {record["labels"]["stage"]: record["candidatesTokenCount"] for record in model_server.billing()[:3]}

    def labels(stage: str) -> str:
        return f'[{{"key":"pipeline","value":"cost_pipeline"}},{{"key":"stage","value":"{stage}"}}]'

    expected = {}
    for stage, tier in (("clean", ""), ("flex", " Flex"), ("priority", " Priority")):
        expected[(f"Gemini 2.5 Flash Lite Text Input{tier} - Predictions", labels(stage))] = prompt
        expected[(f"Gemini 2.5 Flash Lite Text Output{tier} - Predictions", labels(stage))] = output[stage]
    assert {key: int(line["usage.amount"]) for key, line in lines.items()} == expected  # provisioned: no line

    on_demand_input = lines[("Gemini 2.5 Flash Lite Text Input - Predictions", labels("clean"))]
    assert on_demand_input["sku.id"] == "F91E-007E-3BA1"
    assert Decimal(on_demand_input["cost"]) == Decimal("0.10") * prompt / 1_000_000  # list price, $0.10 per M
    # genai-prices has no flex or priority price for this model: unpriced, never the standard price nor 0
    assert {line["cost"] for (sku, _), line in lines.items() if "Flex" in sku or "Priority" in sku} == {""}

    path = tmp_path / "vertex_export.csv"
    with urllib.request.urlopen(f"{model_server.url}/admin/billing/export?surface=vertex", timeout=10) as answer:
        path.write_bytes(answer.read())
    read = {(line.sku.model, line.sku.kind, line.sku.tier) for line in read_export(path)}
    assert read == {(MODEL, kind, tier) for kind in ("input", "output") for tier in ("standard", "flex", "priority")}
    assert {row["service.description"] for row in export(model_server.url)} == {"Gemini API"}


def test_a_tier_genai_prices_prices_is_billed_at_that_tier(model_server, credentials_file):
    model_server.configure(rate_flex=1.0)
    client = vertex_client(model_server.url)
    client.models.generate_content(model="gemini-4-argon", contents=TEXT)

    (line,) = [row for row in export(model_server.url, "vertex") if "Input" in row["sku.description"]]
    assert line["sku.description"] == "Gemini 4 Argon Text Input Flex - Predictions"
    at = datetime.fromtimestamp(model_server.billing()[0]["at"], timezone.utc)
    usage = genai_prices.Usage(input_tokens=count_tokens(TEXT))

    def price(tier: dict | None) -> Decimal:
        calculation = genai_prices.calc_price(
            usage, "gemini-4-argon", provider_id="google", genai_request_timestamp=at, price_context=tier
        )
        return calculation.input_price

    assert Decimal(line["cost"]) == price({"service_tier": "flex"}) < price(None)


@contextmanager
def server_logging_to(log: Path) -> Iterator[str]:
    """The shipped server in its own process, its stderr (uvicorn's log and any traceback) kept in `log`."""
    with log.open("w") as errors_out:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "--port", "0"], stdout=subprocess.PIPE, stderr=errors_out, text=True
        )
        try:
            assert process.stdout is not None
            found = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
            assert found, log.read_text()
            yield found.group(0)
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_no_token_or_client_secret_reaches_a_record_or_the_log(tmp_path, monkeypatch):
    log = tmp_path / "server.log"
    with server_logging_to(log) as url:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(local_credentials_file(tmp_path, url)))
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
        client = vertex_client(url, credentials=credentials)
        generate(client, labels={"pipeline": "cost_pipeline"})
        client.models.count_tokens(model=MODEL, contents=TEXT)
        with pytest.raises(errors.ClientError):
            generate(vertex_client(url, credentials=google.oauth2.credentials.Credentials(token="ya29.forged-9e1")))
        records = ""
        for path in ADMIN_PATHS:
            with urllib.request.urlopen(url + path, timeout=10) as response:
                records += response.read().decode()

    assert credentials.token and "vertex" in records  # a token was issued and the calls were recorded
    basic = base64.b64encode(f"{LOCAL_CLIENT_ID}:{LOCAL_CLIENT_SECRET}".encode()).decode()
    for secret in (credentials.token, LOCAL_CLIENT_SECRET, LOCAL_REFRESH_TOKEN, basic, "ya29.forged-9e1"):
        assert secret not in records
        assert secret not in log.read_text()
