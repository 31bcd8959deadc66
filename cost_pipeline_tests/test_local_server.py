"""The shipped model server: its deterministic model, its usage, and its faults, through the real SDK."""

import asyncio

import pytest
from google import genai
from google.genai import errors, types

from cost_pipeline.gemini.tools import FUNCTION_DECLARATIONS, TOOLS
from cost_pipeline.model_server.server import choose_tool, clean_text, count_tokens

DECLARATIONS = [d.model_dump(mode="json", exclude_none=True) for d in FUNCTION_DECLARATIONS]


@pytest.mark.parametrize(
    "raw,cleaned",
    [
        ("um can you s-schedule a a meeting with Sarah", "Can you schedule a meeting with Sarah?"),
        ("i-i want to uh order like two pizzas", "I want to order two pizzas."),
        ("you know what i mean the the weather is nice", "What the weather is nice?"),
        ("I would like a coffee", "I would like a coffee."),
        ("Already clean.", "Already clean."),
    ],
)
def test_cleaning_removes_fillers_stutters_repeats_and_fixes_case(raw, cleaned):
    assert clean_text(raw)[0] == cleaned


def test_cleaning_reports_what_it_changed():
    _, changes = clean_text("um s-so so hello")
    assert changes == [
        "removed 1 filler(s)",
        "removed 1 stutter(s)",
        "removed 1 repeated word(s)",
        "capitalised the first word",
        "added end punctuation",
    ]


@pytest.mark.parametrize(
    "text,name,arguments",
    [
        (
            "Can you schedule a meeting with Sarah on friday at 2pm?",
            "schedule_meeting",
            {"attendees": ["Sarah"], "date": "friday", "time": "2pm"},
        ),
        (
            "Send an email to John saying I'll be late today.",
            "send_email",
            {"to": "John", "body": "I'll be late today"},
        ),
        ("Search the web for flights to Lisbon.", "search_web", {"query": "flights to Lisbon"}),
        (
            "Remind me to call the dentist tomorrow morning.",
            "set_reminder",
            {"task": "call the dentist", "when": "tomorrow morning"},
        ),
        (
            "I want to order two large pizzas from Dominos.",
            "place_order",
            {"quantity": 2, "item": "large pizzas", "store": "Dominos"},
        ),
        ("What's the weather in Paris tomorrow?", "get_weather", {"city": "Paris", "when": "tomorrow"}),
    ],
)
def test_each_tool_is_chosen_with_arguments_from_the_text(text, name, arguments):
    assert choose_tool(text, DECLARATIONS) == {"name": name, "args": arguments}


@pytest.mark.parametrize("text", ["Thanks, that's great.", "How are you doing today?", "Tell me a joke."])
def test_small_talk_calls_no_tool(text):
    assert choose_tool(text, DECLARATIONS) is None


def test_only_declared_tools_are_chosen():
    weather_only = [d for d in DECLARATIONS if d["name"] == "get_weather"]
    assert choose_tool("Send an email to John.", weather_only) is None


def sdk(model_server) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=model_server.url, timeout=5000))


def generate(model_server, model="gemini-2.5-flash-lite", **config):
    async def go():
        client = sdk(model_server)
        try:
            return await client.aio.models.generate_content(
                model=model,
                contents="um search the web for flights to lisbon",
                config=types.GenerateContentConfig(system_instruction="You clean text. " * 30, **config),
            )
        finally:
            await client.aio.aclose()

    return asyncio.run(go())


def test_usage_is_deterministic_and_complete(model_server):
    first = generate(model_server).usage_metadata
    second = generate(model_server).usage_metadata
    system = "You clean text. " * 30
    assert first.prompt_token_count == count_tokens(system) + count_tokens("um search the web for flights to lisbon")
    assert first.cached_content_token_count is None
    assert second.cached_content_token_count == count_tokens(system)
    assert second.total_token_count == second.prompt_token_count + second.candidates_token_count
    assert first.thoughts_token_count is None


def test_thinking_models_report_thoughts_and_budgets_bound_them(model_server):
    usage = generate(model_server, model="gemini-2.5-flash").usage_metadata
    assert usage.thoughts_token_count == 3 * usage.candidates_token_count + 24
    assert (
        usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    )
    bounded = generate(model_server, model="gemini-2.5-flash", thinking_config=types.ThinkingConfig(thinking_budget=10))
    assert bounded.usage_metadata.thoughts_token_count == 10
    off = generate(model_server, model="gemini-2.5-flash", thinking_config=types.ThinkingConfig(thinking_budget=0))
    assert off.usage_metadata.thoughts_token_count is None


def test_a_built_in_tool_reports_tool_use_prompt_tokens(model_server):
    usage = generate(model_server, tools=[types.Tool(google_search=types.GoogleSearch())]).usage_metadata
    assert usage.tool_use_prompt_token_count == 50


def test_function_declarations_come_back_as_native_function_calls(model_server):
    async def go():
        client = sdk(model_server)
        try:
            return await client.aio.models.generate_content(
                model="gemini-2.5-flash-lite",
                contents="Remind me to water the plants tonight.",
                config=types.GenerateContentConfig(
                    tools=TOOLS, automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True)
                ),
            )
        finally:
            await client.aio.aclose()

    (call,) = asyncio.run(go()).function_calls
    assert (call.name, call.args) == ("set_reminder", {"task": "water the plants", "when": "tonight"})


@pytest.mark.parametrize("fault,code", [("rate_429", 429), ("rate_500", 500), ("rate_503", 503), ("rate_400", 400)])
def test_injected_faults_reach_the_sdk_as_api_errors(model_server, fault, code):
    model_server.configure(**{fault: 1.0})
    with pytest.raises(errors.APIError) as raised:
        generate(model_server)
    assert raised.value.code == code
    if code == 429:
        assert raised.value.details["error"]["details"][0]["retryDelay"] == "0.2s"


def test_missing_usage_is_injectable(model_server):
    model_server.configure(rate_missing_usage=1.0)
    assert generate(model_server).usage_metadata is None
    assert model_server.stats()["missing_usage"] == 1


@pytest.mark.parametrize("rate,finish", [("rate_max_tokens", "MAX_TOKENS"), ("rate_safety", "SAFETY")])
def test_rejectable_answers_keep_their_usage(model_server, rate, finish):
    model_server.configure(**{rate: 1.0})
    answer = generate(model_server)
    assert answer.candidates[0].finish_reason.value == finish
    assert answer.usage_metadata.prompt_token_count > 0
    (record,) = model_server.billing()
    assert record["promptTokenCount"] == answer.usage_metadata.prompt_token_count and record["rejection"]


def test_a_blocked_prompt_has_no_candidates_but_is_billed(model_server):
    model_server.configure(rate_blocked_prompt=1.0)
    answer = generate(model_server)
    assert not answer.candidates and answer.prompt_feedback.block_reason.value == "PROHIBITED_CONTENT"
    assert model_server.billing()[0]["promptTokenCount"] == answer.usage_metadata.prompt_token_count


def test_an_identical_request_gets_the_identical_rejection(model_server):
    model_server.configure(rate_safety=0.5, seed=4)
    finishes = {generate(model_server).candidates[0].finish_reason.value for _ in range(3)}
    assert len(finishes) == 1


def test_an_alias_is_served_and_billed_as_its_model(model_server):
    answer = generate(model_server, model="gemini-flash-lite-latest")
    assert answer.model_version == "gemini-2.5-flash-lite"
    assert model_server.billing()[0]["model"] == "gemini-2.5-flash-lite"


def test_a_batch_job_is_pending_then_answers_each_inlined_request_in_order_billed_at_batch(model_server):
    """`batchGenerateContent`, `batches.get` and `:cancel` as google-genai speaks them; per-request errors not
    billed."""
    import time

    model_server.configure(batch_delay_s=0.3, rate_batch_error=0.25, seed=5)
    client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=model_server.url))
    texts = [f"um, can you b-book a a meeting number {i}" for i in range(12)]
    job = client.batches.create(
        model="gemini-2.5-flash-lite",
        src=[
            {
                "contents": [{"parts": [{"text": text}], "role": "user"}],
                "metadata": {"key": f"k{i}"},
                "config": {"system_instruction": "Clean the turn.", "temperature": 0.0},
            }
            for i, text in enumerate(texts)
        ],
    )
    assert job.name.startswith("batches/") and not job.done
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    assert model_server.billing() == []  # nothing is answered, nor billed, before the job runs
    time.sleep(0.35)
    done = client.batches.get(name=job.name)
    assert done.done and done.state == types.JobState.JOB_STATE_SUCCEEDED
    answers = done.dest.inlined_responses
    assert [a.metadata["key"] for a in answers] == [f"k{i}" for i in range(12)]
    failed = [a for a in answers if a.error is not None]
    assert 0 < len(failed) < 12 and all(a.response is None and a.error.code == 13 for a in failed)
    billed = model_server.billing()
    assert len(billed) == 12 - len(failed) and {r["processing"] for r in billed} == {"batch"}
    assert {r["response_id"] for r in billed} == {a.response.response_id for a in answers if a.error is None}
    assert all(a.response.usage_metadata.prompt_token_count > 0 for a in answers if a.error is None)

    pending = client.batches.create(model="gemini-2.5-flash-lite", src=[{"contents": "hello"}])
    client.batches.cancel(name=pending.name)
    assert client.batches.get(name=pending.name).state == types.JobState.JOB_STATE_CANCELLED
    stats = model_server.stats()
    assert (stats["batches_created"], stats["batches_completed"], stats["batches_cancelled"]) == (2, 1, 1)
