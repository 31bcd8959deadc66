"""Judging a Gemini answer: accepted, or rejected with a reason, before anything is stored.

An HTTP 200 is billed whatever it says, but not every 200 is an answer we can use: a
finish reason other than STOP (MAX_TOKENS, SAFETY, PROHIBITED_CONTENT,
MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, ...), a prompt blocked with no
candidates, an empty answer, cleaning text that is not the JSON we asked for, a call to
a tool we did not declare, or arguments that break the tool's declared JSON schema. Each
of those is a `Verdict` with `accepted=False` and a reason a person can read; the
session records it as a billed, rejected attempt. A blocked prompt is `final`: the same
input is blocked again, so retrying only pays again. Pure: no I/O, no Dagster.
"""

from dataclasses import dataclass
from functools import cache

import jsonschema

from cost_pipeline.gemini.prompts import CLEAN, parse_cleaning, parse_function
from cost_pipeline.gemini.tools import FUNCTION_DECLARATIONS

ACCEPTED_FINISH_REASONS = {None, "STOP", "FINISH_REASON_UNSPECIFIED"}
FINAL_FINISH_REASONS = {"PROHIBITED_CONTENT", "BLOCKLIST", "SPII"}
"""Policy blocks of the content itself: like a blocked prompt, the same input is blocked again."""


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    result: dict | None
    reason: str | None
    """Why the answer was rejected: the finish reason, block reason or parse error."""
    answer_text: str = ""
    final: bool = False
    """A rejection that a retry of the same input cannot fix."""


def judge(stage: str, response) -> Verdict:
    """Accept or reject a google-genai `GenerateContentResponse` for `stage`."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return Verdict(False, None, f"prompt blocked: {_name(feedback.block_reason)}", final=True)
    candidates = response.candidates or []
    if not candidates:
        return Verdict(False, None, "no candidates")
    candidate = candidates[0]
    finish = _name(candidate.finish_reason)
    if finish not in ACCEPTED_FINISH_REASONS:
        return Verdict(False, None, f"finish reason {finish}", final=finish in FINAL_FINISH_REASONS)
    parts = (candidate.content.parts if candidate.content else None) or []
    if not parts:
        return Verdict(False, None, "empty answer: no parts")
    if stage == CLEAN:
        text = "".join(part.text for part in parts if part.text and not part.thought)
        try:
            return Verdict(True, parse_cleaning(text), None, text)
        except ValueError as err:
            return Verdict(False, None, f"off-format: {err}", text)
    calls = [part.function_call for part in parts if part.function_call]
    said = "".join(part.text for part in parts if part.text and not part.thought) or None
    if not calls and not said:
        return Verdict(False, None, "empty answer: no text and no function call")
    result = parse_function(calls, said)
    name = result["function_name"]
    if name is not None:
        problem = argument_problem(name, result["arguments"])
        if problem:
            return Verdict(False, None, problem, str(result))
    return Verdict(True, result, None, str(result))


def argument_problem(name: str, arguments: dict) -> str | None:
    """Why a function call cannot be used (undeclared tool, arguments off schema), or None."""
    validator = _validators().get(name)
    if validator is None:
        return f"undeclared tool: {name}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        return f"arguments break the schema of {name}: {where}: {error.message}"[:300]
    return None


@cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    validators: dict[str, jsonschema.protocols.Validator] = {}
    for declaration in FUNCTION_DECLARATIONS:
        if declaration.name is None:
            continue
        schema = declaration.parameters_json_schema
        validators[declaration.name] = jsonschema.validators.validator_for(schema)(schema)
    return validators


def _name(value) -> str | None:
    if value is None:
        return None
    return getattr(value, "value", None) or str(value)
