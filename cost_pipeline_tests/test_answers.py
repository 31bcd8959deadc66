"""Judging answers: every kind of unusable 200 the real API sends is rejected with a reason, through the real SDK
types."""

import json

import pytest
from google.genai import types

from cost_pipeline.gemini.answers import argument_problem, judge
from cost_pipeline.gemini.prompts import CLEAN, FUNCTION

GOOD_CLEANING = json.dumps({"cleaned_text": "Hello there.", "confidence": 0.9, "changes": ["removed 1 filler(s)"]})


def response(body: dict) -> types.GenerateContentResponse:
    """A response parsed by the SDK from a REST body, as the client would see it."""
    return types.GenerateContentResponse._from_response(response=body, kwargs={})


def candidate(parts=None, finish="STOP") -> dict:
    content = {"role": "model", "parts": parts} if parts is not None else {"role": "model"}
    return {"candidates": [{"content": content, "finishReason": finish}], "usageMetadata": {"promptTokenCount": 10}}


def test_a_clean_json_answer_is_accepted():
    verdict = judge(CLEAN, response(candidate([{"text": GOOD_CLEANING}])))
    assert verdict.accepted and verdict.result["cleaned_text"] == "Hello there."


@pytest.mark.parametrize(
    "body,reason,final",
    [
        (
            {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 10}},
            "prompt blocked: PROHIBITED_CONTENT",
            True,
        ),
        ({"candidates": [], "usageMetadata": {"promptTokenCount": 10}}, "no candidates", False),
        (candidate([{"text": GOOD_CLEANING[:20]}], "MAX_TOKENS"), "finish reason MAX_TOKENS", False),
        (candidate(None, "SAFETY"), "finish reason SAFETY", False),
        (candidate(None, "PROHIBITED_CONTENT"), "finish reason PROHIBITED_CONTENT", True),
        (candidate([]), "empty answer: no parts", False),
        (candidate([{"text": "Sure! Here it is: Hello there."}]), "off-format: cleaning answer is not JSON", False),
        (
            candidate([{"text": json.dumps({"confidence": 1})}]),
            "off-format: cleaning answer has no cleaned_text",
            False,
        ),
    ],
)
def test_unusable_cleaning_answers_are_rejected_with_their_reason(body, reason, final):
    verdict = judge(CLEAN, response(body))
    assert not verdict.accepted and verdict.reason.startswith(reason) and verdict.final is final


def call(name, args) -> dict:
    return candidate([{"functionCall": {"name": name, "args": args}}])


def test_a_declared_call_with_valid_arguments_and_a_plain_answer_are_accepted():
    assert judge(FUNCTION, response(call("get_weather", {"city": "Paris"}))).result["function_name"] == "get_weather"
    answer = judge(FUNCTION, response(candidate([{"text": "No tool is needed."}])))
    assert answer.accepted and answer.result["function_name"] is None


@pytest.mark.parametrize(
    "body,reason",
    [
        (call("book_flight", {"to": "Lisbon"}), "undeclared tool: book_flight"),
        (
            call("place_order", {"quantity": "several"}),
            "arguments break the schema of place_order: arguments: 'item' is a required property",
        ),
        (
            call("place_order", {"item": "pizza", "quantity": 0}),
            "arguments break the schema of place_order: quantity: 0 is less than the minimum of 1",
        ),
        (
            call("schedule_meeting", {"attendees": "Sarah"}),
            "arguments break the schema of schedule_meeting: attendees: 'Sarah' is not of type 'array'",
        ),
        (candidate(None, "MALFORMED_FUNCTION_CALL"), "finish reason MALFORMED_FUNCTION_CALL"),
        (candidate(None, "UNEXPECTED_TOOL_CALL"), "finish reason UNEXPECTED_TOOL_CALL"),
        (candidate([{"text": ""}]), "empty answer"),
    ],
)
def test_unusable_function_answers_are_rejected_never_stored_as_no_call(body, reason):
    verdict = judge(FUNCTION, response(body))
    assert not verdict.accepted and verdict.reason.startswith(reason), verdict.reason


def test_argument_problem_is_none_for_good_arguments():
    assert argument_problem("send_email", {"to": "John", "body": "Late"}) is None
