"""A request (`prompts.LlmRequest`) in the SDK's terms: its config and its contents, as standard and batch calls
send them.

No Dagster and none of the stage here, so that the overhead bench's bare loop sends exactly what the stage sends
(`bench/gemini_overhead.py`) without importing the stage.
"""

from google.genai import types

from cost_pipeline.gemini.prompts import LlmRequest
from cost_pipeline.gemini.tools import TOOLS


def content_config(
    request: LlmRequest, labels: dict[str, str] | None = None, service_tier: str | None = None
) -> types.GenerateContentConfig:
    """The SDK config that sends `request`'s system instruction, tools and generation config; on Vertex AI its
    `labels` (the Gemini Developer API takes none); and the `service_tier` asked for (None: standard)."""
    options = dict(request.generation_config)
    budget = options.pop("thinking_budget", None)
    return types.GenerateContentConfig(
        system_instruction=request.system_instruction,
        thinking_config=types.ThinkingConfig(thinking_budget=budget) if budget is not None else None,
        tools=TOOLS if request.with_tools else None,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True) if request.with_tools else None,
        labels=labels,
        service_tier=service_tier,  # type: ignore[arg-type]
        **options,
    )


def request_contents(request: LlmRequest) -> list[types.ContentDict]:
    """`request`'s contents in the SDK's plain-dict form (`ContentDict`), which it turns into the same request JSON as
    `types.Content` objects, key order included (`test_turns` compares them, on the server and as a batch request).

    Why dicts: the SDK validates its parameters with pydantic, and given `Content`/`Part` instances cost that
    validation several times what dicts cost (the contents' types are unions, its models validate from attributes, and
    its before-validator reads every field of each instance), on every call.
    """
    return [{"role": "user", "parts": [{"text": part} for part in parts]} for parts in request.contents]
