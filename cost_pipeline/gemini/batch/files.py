"""A batch job's requests as an uploaded JSON Lines file, and its answers read back from the result file.

Why: the Batch API takes inlined requests only up to about 20 MB per job; a larger job must
upload its requests with the Files API (up to 2 GB) and name the file as the job's source,
and its answers then come back as a result file rather than inline. The line formats are
Google's: input `{"key": ..., "request": GenerateContentRequest}`, output `{"key": ...,
"response": GenerateContentResponse}` or `{"key": ..., "error": Status}`.

The request in a line is produced by google-genai's own conversion of an inlined request
(the one `batches.create` applies to inlined requests), so a request sent in a file is
byte for byte the request that would have been inlined. That conversion is a private
function of the SDK (`batches._InlinedRequest_to_mldev`, then the `_common` helpers `create`
applies); `test_batch.py` holds the two paths equal, so an SDK upgrade that moves it fails a
test rather than a day.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.genai import _common, types
from google.genai import batches as genai_batches

INLINE_LIMIT_BYTES = 20_000_000
"""The Batch API's limit on a job's inlined requests (the whole create request); past it, a file."""
INLINE_MARGIN = 0.9
"""Inline only up to this share of the limit: the create request also carries the job's name and config."""


@dataclass(frozen=True)
class Answer:
    """One request's answer as a job returns it, inline or in a file: its key, then a response or an error."""

    key: str
    response: types.GenerateContentResponse | None
    error_code: int | None = None
    error_message: str | None = None


def rest_request(client, inlined: dict) -> dict:
    """`inlined` (an InlinedRequest as `batches.create` takes it) as the REST GenerateContentRequest it sends."""
    converted = genai_batches._InlinedRequest_to_mldev(client._api_client, inlined)["request"]
    # As `batches.create` finishes a request body: SDK objects to plain JSON values.
    return _common.encode_unserializable_types(_common.convert_to_dict(converted))


def write_requests(path: Path, requests: list[tuple[str, dict]]) -> int:
    """(key, REST request) pairs as one JSON Lines input file (`key`, `request`); returns its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        for key, request in requests:
            out.write(json.dumps({"key": key, "request": request}, separators=(",", ":")))
            out.write("\n")
    return path.stat().st_size


def inline_size(requests: list[tuple[str, dict]]) -> int:
    """How many bytes (key, REST request) pairs take inlined in the create request's JSON (request and metadata)."""
    return sum(
        len(json.dumps({"request": request, "metadata": {"key": key}}, separators=(",", ":"))) + 1
        for key, request in requests
    )


def read_answers(path: Path) -> Iterator[Answer]:
    """The answers of a downloaded result file, one line at a time (a day's file is never held whole)."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield answer_from_line(json.loads(line))


def answer_from_line(line: dict) -> Answer:
    error = line.get("error")
    if error is not None or not line.get("response"):
        error = error or {}
        return Answer(line.get("key", ""), None, error.get("code"), error.get("message") or "no answer")
    return Answer(
        line.get("key", ""), types.GenerateContentResponse._from_response(response=line["response"], kwargs={})
    )


def inline_answers(job: types.BatchJob) -> Iterator[Answer]:
    """The answers of a job whose requests were inlined (the key is in each answer's metadata)."""
    for answer in (job.dest.inlined_responses if job.dest else None) or []:
        key = (answer.metadata or {}).get("key", "")
        if answer.error is not None or answer.response is None:
            yield Answer(
                key,
                None,
                answer.error.code if answer.error else None,
                answer.error.message if answer.error else "no answer",
            )
        else:
            yield Answer(key, answer.response)
