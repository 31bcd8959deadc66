"""A Gemini-compatible HTTP server: the real google-genai client talks to it unchanged.

There is no internet and usually no API key here, yet the pipeline must exercise the
real SDK, its HTTP stack and its error types. This server speaks the REST shape of
`POST /{version}/models/{model}:generateContent` with a deterministic "model":

- without tools it cleans the last text part (fillers, stutters, repeated words,
  capitals, end punctuation) and answers the JSON the cleaning prompt asks for;
- with function declarations it picks a declared tool by the text's content and fills
  its arguments from the text, or answers in words when no tool fits;
- `usageMetadata` comes from a deterministic token count: prompt (system instruction,
  contents and tool declarations), candidates, thoughts for thinking models, an
  implicit-cache hit when the system instruction and tools were seen before, and
  `toolUsePromptTokenCount` when a built-in tool such as `googleSearch` is declared.

It also speaks the Batch API as google-genai calls it: `models/{model}:batchGenerateContent`
with inlined requests, or an uploaded JSON Lines file (`local_files.py` serves the Files API;
the answers then come back as a result file), creates a pending job, `GET batches/{id}` answers every request in order
once `batch_delay_s` has passed (usage per inlined response, billed with processing `batch`;
`rate_batch_error` turns a share into per-request errors, not billed), `POST batches/{id}:cancel`
cancels; and `models/{model}:countTokens` counts for free.

Latency and faults are configurable and can be changed while it runs
(`POST /admin/config`): HTTP 429 with a `RetryInfo` delay, 500, 503, 400, responses
slower than the client's timeout, bodies cut off mid-JSON, and responses without
`usageMetadata`.
`GET /admin/stats` counts requests by model and outcome, `GET /admin/requests` returns
the latest request bodies, `POST /admin/reset` clears both. `model_aliases` serves a model
as another (an alias, or a retired model routed to its successor, billed at the
successor's rates, as Google does). `POST /admin/replay` queues recorded response bodies
(`{"bodies": [...]}`) that answer the next requests verbatim, billed by their own usage.
`GET /admin/billing/export` is what the server billed, as Cloud Billing's BigQuery export
in the Gemini API's SKU wording (`money/provider_export.py`). Served by uvicorn on
loopback; `cost-pipeline serve-model --port N` runs it on its own.

It speaks Vertex AI too, as google-genai calls it with `vertexai=True`, a project, a location
and a base URL: `POST /{v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/
models/{model}:generateContent` and `:countTokens`. A Vertex call needs `Authorization: Bearer`
with a token this server issued at `POST /token` (the OAuth refresh google-auth's
`external_account_authorized_user` and `authorized_user` credentials send to their token URL),
else 401 UNAUTHENTICATED; issued tokens outlive `/admin/reset`, as Google's outlive a test.
Tokens, refresh tokens and client secrets are never kept or logged: only a token's hash is.
A Vertex answer carries `trafficType` (`rate_flex`, `rate_priority`, `rate_provisioned` inject
the other tiers), `createTime` and Vertex's `responseId`; its billing record and its
`/admin/requests` entry carry `surface` `vertex`, the project, location, `labels` and
`traffic_type` (the request entry also whether an `Authorization` header came, never its value).
`GET /admin/billing/export?surface=vertex` is the Vertex calls' bill in Vertex AI's SKU wording
(`vertex_export_csv`); without `surface` (or with `gemini-api`) it stays the Developer API's.
"""

import argparse
import asyncio
import hashlib
import json
import random
import re
import secrets
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter, deque
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Any

import uvicorn

from cost_pipeline.gemini.local_endpoint import ServerConfig, config_arguments, config_from
from cost_pipeline.gemini.prompts import REMINDER_PREFIX
from cost_pipeline.gemini.traffic import FLEX, ON_DEMAND, PRIORITY, PROVISIONED_THROUGHPUT
from cost_pipeline.gemini.usage import normalized_model
from cost_pipeline.model_server.files import LocalFiles
from cost_pipeline.model_server.files import error_body as _error
from cost_pipeline.money.provider_export import (
    GEMINI_API_SURFACE,
    LOCAL_PROJECT,
    VERTEX_SURFACE,
    provider_export_csv,
    vertex_export_csv,
)

FILLERS = {"um", "uh", "er", "hmm", "uhm", "erm"}
FILLER_PHRASES = (("you", "know"), ("i", "mean"))
QUESTION_WORDS = {
    "what",
    "how",
    "is",
    "can",
    "could",
    "would",
    "will",
    "do",
    "does",
    "are",
    "when",
    "where",
    "who",
    "why",
    "should",
    "did",
}
TOKEN_PATTERN = re.compile(r"\w{1,4}|[^\w\s]")
MODEL_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/models/(?P<model>[^:/]+):(?P<method>[A-Za-z]+)$")
BATCH_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/batches/(?P<id>[^:/]+)(?::(?P<method>[A-Za-z]+))?$")
BATCH_DONE = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")
RECENT_REQUESTS = 200
BILLED_USAGE_FIELDS = (
    "promptTokenCount",
    "cachedContentTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
)
VERTEX_PATH = re.compile(
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^:/]+):(?P<method>[A-Za-z]+)$"
)
TOKEN_LIFETIME_S = 3600
# Google's own 401 messages: a client that reads them (or a person) sees what Google would say.
NO_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential."
)
BAD_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential."
)
LABEL_KEY = re.compile(r"^[^\W\d_][\w-]{0,62}$")
LABEL_VALUE = re.compile(r"^[\w-]{0,63}$")
MAX_LABELS = 64

# Keywords that select a tool, checked in this order; only declared tools are eligible.
TOOL_KEYWORDS = {
    "set_reminder": ("remind", "reminder"),
    "send_email": ("email",),
    "schedule_meeting": ("schedule", "meeting", "set up a call", "call with"),
    "place_order": ("order",),
    "get_weather": ("weather", "rain", "forecast"),
    "search_web": ("search", "look up", "find"),
}


def count_tokens(text: str) -> int:
    """The fake model's tokenizer: words in pieces of up to four characters, and punctuation."""
    return len(TOKEN_PATTERN.findall(text))


def clean_text(text: str) -> tuple[str, list[str]]:
    """Remove fillers, stutters and immediate repeats; fix capitals and end punctuation."""
    words = text.split()
    kept: list[str] = []
    fillers = stutters = repeats = 0
    index = 0
    while index < len(words):
        word = words[index]
        bare = word.lower().strip(",.!?")
        pair = tuple(w.lower().strip(",.!?") for w in words[index : index + 2])
        if pair in FILLER_PHRASES:
            fillers += 1
            index += 2
            continue
        if bare in FILLERS or (bare == "like" and _filler_like(kept)):
            fillers += 1
            index += 1
            continue
        stutter = re.fullmatch(r"(\w+)-(\w+)", word)
        if stutter and stutter.group(2).lower().startswith(stutter.group(1).lower()):
            word = stutter.group(2)
            stutters += 1
        if kept and kept[-1].lower().strip(",.!?") == word.lower().strip(",.!?"):
            repeats += 1
            index += 1
            continue
        kept.append(word)
        index += 1
    changes = []
    if fillers:
        changes.append(f"removed {fillers} filler(s)")
    if stutters:
        changes.append(f"removed {stutters} stutter(s)")
    if repeats:
        changes.append(f"removed {repeats} repeated word(s)")
    kept = ["I" if w == "i" else re.sub(r"^i'", "I'", w) for w in kept]
    if kept and kept[0][0].islower():
        kept[0] = kept[0][0].upper() + kept[0][1:]
        changes.append("capitalised the first word")
    cleaned = " ".join(kept)
    if cleaned and cleaned[-1] not in ".?!":
        cleaned += "?" if kept[0].lower() in QUESTION_WORDS else "."
        changes.append("added end punctuation")
    return cleaned, changes


def _filler_like(kept: list[str]) -> bool:
    """'like' is a filler unless it follows a word that makes it a verb ('would like', 'I'd like')."""
    return not kept or kept[-1].lower() not in {
        "would",
        "i'd",
        "you'd",
        "we'd",
        "they'd",
        "i",
        "you",
        "we",
        "they",
        "to",
    }


def choose_tool(text: str, declarations: list[dict]) -> dict | None:
    """The declared tool the text asks for, with arguments filled from the text, or None."""
    lowered = text.lower()
    declared = {d["name"]: d for d in declarations}
    for name, keywords in TOOL_KEYWORDS.items():
        if name in declared and any(k in lowered for k in keywords):
            declaration = declared[name]
            schema = (
                declaration.get("parametersJsonSchema")
                or declaration.get("parameters_json_schema")
                or declaration.get("parameters")
                or {}
            )
            properties = schema.get("properties", {})
            arguments = {k: v for k, v in _arguments(name, text).items() if k in properties and v}
            if not set(schema.get("required", [])) <= set(arguments):
                return None  # like a careful model: no call it cannot fill; it asks in words instead
            return {"name": name, "args": arguments}
    return None


def _arguments(name: str, text: str) -> dict:
    body = text.rstrip(".?!")

    def after(pattern: str) -> str | None:
        found = re.search(pattern, body, flags=re.IGNORECASE)
        return found.group(1).strip() if found else None

    when = after(r"\b(?:on )?(tomorrow(?: morning)?|tonight|next week|in an hour|\w+day)\b")
    if name == "schedule_meeting":
        return {
            "attendees": [a] if (a := after(r"\bwith (.+?)(?: on | at | tomorrow| next|$)")) else None,
            "date": when,
            "time": after(r"\bat ([\w:]+(?: ?[ap]m)?)"),
        }
    if name == "send_email":
        return {
            "to": after(r"\b(?:email|email to|an email to) (.+?)(?: saying | that |$)"),
            "body": after(r"\b(?:saying|that) (.+)$"),
        }
    if name == "search_web":
        return {"query": after(r"\b(?:search the web for|search for|look up|find) (.+?)(?: for me)?$")}
    if name == "set_reminder":
        return {
            "task": after(r"\bto (.+?)(?: in an hour| tomorrow| at \d| on \w+day| tonight|$)"),
            "when": after(r"\b(in an hour|tomorrow morning|tomorrow|tonight|at [\w:]+|on \w+day)$"),
        }
    if name == "place_order":
        found = re.search(r"order (\w+) (.+?) from (.+)$", body, flags=re.IGNORECASE)
        if not found:
            return {"item": after(r"order (.+)$")}
        quantity = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}.get(found.group(1).lower())
        return {"quantity": quantity, "item": found.group(2), "store": found.group(3)}
    if name == "get_weather":
        return {"city": after(r"\bin (\w[\w ]*?)(?: tomorrow| tonight| today| next| on | in an|$)"), "when": when}
    return {}


class GeminiLikeServer:
    """The ASGI application: routing, fault injection, the fake model and its usage."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.random = random.Random(config.seed)
        self.stats: Counter = Counter()
        self.requests: deque = deque(maxlen=RECENT_REQUESTS)
        self.seen_prefixes: set[tuple[str, str]] = set()
        self.billing: list[dict] = []
        self.aliases = parse_aliases(config.model_aliases)
        self.batches: dict[str, dict] = {}
        self.files = LocalFiles()
        self.replays: deque = deque()
        self.traffic = random.Random(config.seed)
        """Rolls the Vertex traffic types apart from `random`, so Vertex answers leave the fault sequence as it was."""
        self.issued_tokens: dict[str, float] = {}
        """The SHA-256 of each access token issued at /token, with its expiry (Unix time)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode().lower(): value.decode() for name, value in scope.get("headers", [])}
        if "x-goog-api-key" in headers:
            self.stats["with_api_key"] += 1
            # Which key arrived, without keeping it: tests prove a key was used by its fingerprint.
            self.stats[f"key:{key_fingerprint(headers['x-goog-api-key'])}"] += 1
        query = scope.get("query_string", b"")
        files = self.files.route(scope["method"], scope["path"], query, headers, body)
        if files is not None:
            status, payload, extra = files
        else:
            (status, payload), extra = await self.route(scope["method"], scope["path"], body, query, headers), {}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        extra = {"content-type": "application/json", **extra}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *((k.encode(), v.encode()) for k, v in extra.items()),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def route(
        self, method: str, path: str, body: bytes, query: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict | bytes]:
        if path == "/token" and method == "POST":
            return self.issue_token(body, headers or {})
        vertex = VERTEX_PATH.match(path)
        if vertex and method == "POST":
            return await self.vertex_call(vertex, body, headers or {})
        if path == "/admin/stats":
            return 200, dict(self.stats)
        if path == "/admin/requests":
            return 200, {"requests": list(self.requests)}
        if path == "/admin/reset" and method == "POST":
            self.stats.clear()
            self.requests.clear()
            self.seen_prefixes.clear()
            self.billing.clear()
            self.batches.clear()
            self.files.clear()
            self.replays.clear()
            return 200, {}
        if path == "/admin/replay" and method == "POST":
            self.replays.extend(json.loads(body or b"{}").get("bodies", []))
            return 200, {"queued": len(self.replays)}
        if path == "/admin/billing":
            return 200, {"records": self.billing}
        if path == "/admin/billing/export":
            asked = urllib.parse.parse_qs(query.decode())
            surface = asked.get("surface", [GEMINI_API_SURFACE])[0]
            if surface == VERTEX_SURFACE:  # Vertex lines name the project and location each call's path named
                return 200, vertex_export_csv(self.billing).encode()
            if surface != GEMINI_API_SURFACE:
                return 400, _error(400, f"surface must be {GEMINI_API_SURFACE} or {VERTEX_SURFACE}", "INVALID_ARGUMENT")
            # ?project=NAME bills another project: a test that points a base URL here treats this server as Google.
            project = asked.get("project", [LOCAL_PROJECT])[0]
            developer = [record for record in self.billing if record["surface"] == GEMINI_API_SURFACE]
            return 200, provider_export_csv(developer, project=project).encode()
        if path == "/admin/config":
            if method == "POST":
                changes = json.loads(body or b"{}")
                unknown = set(changes) - {f.name for f in fields(ServerConfig)}
                if unknown:
                    return 400, _error(400, f"unknown config fields {sorted(unknown)}", "INVALID_ARGUMENT")
                for name, value in changes.items():
                    setattr(self.config, name, value)
                self.aliases = parse_aliases(self.config.model_aliases)
                if "seed" in changes:
                    self.random.seed(self.config.seed)
                    self.traffic.seed(self.config.seed)
            return 200, asdict(self.config)
        batch = BATCH_PATH.match(path)
        if batch:
            return self.batch_job(batch["id"], method, batch["method"])
        found = MODEL_PATH.match(path)
        if not found or method != "POST":
            return 404, _error(404, f"no route for {method} {path}", "NOT_FOUND")
        if found["method"] not in ("generateContent", "batchGenerateContent", "countTokens"):
            return 400, _error(400, f"method {found['method']} is not supported here", "INVALID_ARGUMENT")
        try:
            request = json.loads(body)
        except json.JSONDecodeError:
            return 400, _error(400, "request body is not JSON", "INVALID_ARGUMENT")
        if found["method"] == "batchGenerateContent":
            return self.create_batch(found["model"], request)
        if found["method"] == "countTokens":  # free, as Google's is: counted, never billed
            self.stats["count_tokens"] += 1
            texts = [p.get("text", "") for c in request.get("contents", []) for p in c.get("parts", [])]
            return 200, {"totalTokens": sum(count_tokens(text) for text in texts)}
        return await self.generate(found["model"], request)

    def issue_token(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        """OAuth 2.0's refresh grant as google-auth sends it (form-encoded): a fresh Bearer token for an hour.

        Client credentials may come as HTTP Basic (external_account_authorized_user) or in the
        form (authorized_user); any non-empty ones are accepted. Only the token's hash is kept.
        """
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        if form.get("grant_type", [""])[0] != "refresh_token":
            return 400, {"error": "unsupported_grant_type", "error_description": "only refresh_token is served here"}
        client = headers.get("authorization", "").lower().startswith("basic ") or form.get("client_id", [""])[0]
        if not form.get("refresh_token", [""])[0] or not client:
            return 400, {"error": "invalid_request", "error_description": "refresh_token and a client are required"}
        token = f"ya29.local-{secrets.token_urlsafe(32)}"
        now = time.time()
        self.issued_tokens = {digest: until for digest, until in self.issued_tokens.items() if until > now}
        self.issued_tokens[_digest(token)] = now + TOKEN_LIFETIME_S
        self.stats["tokens_issued"] += 1
        return 200, {"access_token": token, "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer"}

    def _unauthenticated(self, authorization: str | None) -> str | None:
        """Why a Vertex call is refused (Google's 401 message), or None for a live token this server issued."""
        if not authorization:
            return NO_CREDENTIALS
        scheme, _, token = authorization.partition(" ")
        until = self.issued_tokens.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        return None if until is not None and until > time.time() else BAD_CREDENTIALS

    async def vertex_call(self, found: re.Match, body: bytes, headers: dict[str, str]) -> tuple[int, dict | bytes]:
        """A Vertex AI publisher-model call: authenticated first, as Google does, then answered like the Gemini
        API's, in Vertex's shape, with its project, location and labels recorded."""
        call: dict[str, Any] = {
            "surface": VERTEX_SURFACE,
            "path": found.group(0),
            "project": found["project"],
            "location": found["location"],
            "authorization": "authorization" in headers,
        }
        self.stats["vertex_requests"] += 1
        refused = self._unauthenticated(headers.get("authorization"))
        if refused:
            self.stats["vertex_unauthenticated"] += 1
            self.requests.append({**call, "model": found["model"], "status": 401})
            return 401, _error(401, refused, "UNAUTHENTICATED")
        if found["method"] not in ("generateContent", "countTokens"):
            return 400, _error(400, f"method {found['method']} is not supported here", "INVALID_ARGUMENT")
        try:
            request = json.loads(body)
        except json.JSONDecodeError:
            return 400, _error(400, "request body is not JSON", "INVALID_ARGUMENT")
        labels = request.get("labels") or {}
        problem = label_problem(labels)
        if problem:
            return 400, _error(400, problem, "INVALID_ARGUMENT")
        call["labels"] = labels
        if found["method"] == "countTokens":  # free, as Google's is: counted, never billed
            self.stats["count_tokens"] += 1
            self.requests.append({**call, "model": found["model"], "body": request})
            return 200, vertex_token_count(request)
        return await self.generate(found["model"], request, call)

    def _traffic_type(self) -> str:
        """The tier a Vertex answer is served at, drawn by `rate_flex`, `rate_priority`, `rate_provisioned`."""
        config, roll = self.config, self.traffic.random()
        for traffic, rate in (
            (FLEX, config.rate_flex),
            (PRIORITY, config.rate_priority),
            (PROVISIONED_THROUGHPUT, config.rate_provisioned),
        ):
            if roll < rate:
                return traffic
            roll -= rate
        return ON_DEMAND

    def create_batch(self, model: str, body: dict) -> tuple[int, dict]:
        """`models/{model}:batchGenerateContent` with inlined requests: a pending job, answered after
        `batch_delay_s`."""
        batch = body.get("batch") or {}
        source = batch.get("inputConfig") or {}
        from_file = source.get("fileName")
        requests: list | None
        if from_file:
            content = self.files.content(from_file)
            if content is None:
                return 400, _error(400, f"input file {from_file} not found", "INVALID_ARGUMENT")
            try:  # a line is {"key", "request"}; kept as an inlined request with the key as its metadata
                requests = [
                    {"request": line["request"], "metadata": {"key": line.get("key", "")}}
                    for line in map(json.loads, content.decode().splitlines())
                    if line
                ]
            except (ValueError, KeyError, TypeError) as err:
                return 400, _error(
                    400, f"input file {from_file} is not JSON Lines of key and request: {err}", "INVALID_ARGUMENT"
                )
        else:
            requests = (source.get("requests") or {}).get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, _error(
                400, "batch.inputConfig must name a fileName or list the inlined requests", "INVALID_ARGUMENT"
            )
        name = f"batches/local-{uuid.uuid4().hex[:16]}"
        now = time.time()
        self.batches[name] = {
            "name": name,
            "model": model,
            "displayName": batch.get("displayName", ""),
            "created": now,
            "ready_at": now + self.config.batch_delay_s,
            "requests": requests,
            "state": "BATCH_STATE_PENDING",
            "responses": None,
            "ended": None,
            "from_file": bool(from_file),
            "responses_file": None,
        }
        self.stats["batches_created"] += 1
        self.stats["batches_from_file"] += bool(from_file)
        self.stats["batch_requests"] += len(requests)
        return 200, self._batch_operation(self.batches[name])

    def batch_job(self, job_id: str, method: str, action: str | None) -> tuple[int, dict]:
        """`GET batches/{id}` (answering the job once its delay has passed) and `POST batches/{id}:cancel`."""
        job = self.batches.get(f"batches/{job_id}")
        if job is None:
            return 404, _error(404, f"batch batches/{job_id} not found", "NOT_FOUND")
        if action == "cancel" and method == "POST":
            if job["state"] not in BATCH_DONE:
                job["state"], job["ended"] = "BATCH_STATE_CANCELLED", time.time()
                self.stats["batches_cancelled"] += 1
            return 200, {}
        if action is not None or method != "GET":
            return 400, _error(400, f"{method} batches/{job_id}:{action} is not supported here", "INVALID_ARGUMENT")
        if job["state"] == "BATCH_STATE_PENDING" and time.time() >= job["ready_at"]:
            self._run_batch(job)
        return 200, self._batch_operation(job)

    def _run_batch(self, job: dict) -> None:
        """Answer every inlined request in order; each answer is billed (at batch rates), each error is not."""
        responses = []
        for item in job["requests"]:
            request, metadata = item.get("request") or {}, item.get("metadata") or {}
            model = (request.get("model") or job["model"]).removeprefix("models/")
            if self.random.random() < self.config.rate_batch_error:
                self.stats["batch_request_errors"] += 1
                responses.append(
                    {
                        "error": {"code": 13, "message": "Internal error while processing the request."},
                        "metadata": metadata,
                    }
                )
                continue
            rejection = self._rejection(request)
            response = self.model_response(model, request, rejection)
            self._bill(response, truncated=False, missing_usage=False, rejection=rejection, processing="batch")
            self.stats[f"ok:{model}"] += 1
            responses.append({"response": response, "metadata": metadata})
        if job["from_file"]:  # answers to a file's requests come back as a result file, one {"key", ...} per line
            lines = [{"key": item.pop("metadata").get("key", ""), **item} for item in responses]
            job["responses_file"] = self.files.add(
                "".join(json.dumps(line) + "\n" for line in lines).encode(), f"{job['name']} results"
            )
        job["responses"], job["state"], job["ended"] = responses, "BATCH_STATE_SUCCEEDED", time.time()
        self.stats["batches_completed"] += 1

    @staticmethod
    def _batch_operation(job: dict) -> dict:
        """The job as the Gemini API returns it: an operation whose metadata is the batch (google-genai reads it)."""

        def stamp(t):
            return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        metadata = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": f"models/{job['model']}",
            "displayName": job["displayName"],
            "name": job["name"],
            "createTime": stamp(job["created"]),
            "updateTime": stamp(job["ended"] or job["created"]),
            "state": job["state"],
            "batchStats": {"requestCount": str(len(job["requests"]))},
        }
        if job["ended"]:
            metadata["endTime"] = stamp(job["ended"])
        if job["responses_file"] is not None:
            metadata["output"] = {"responsesFile": job["responses_file"]}
        elif job["responses"] is not None:
            metadata["output"] = {"inlinedResponses": {"inlinedResponses": job["responses"]}}
        return {"name": job["name"], "metadata": metadata, "done": job["state"] in BATCH_DONE}

    async def generate(self, model: str, request: dict, vertex: dict | None = None) -> tuple[int, dict | bytes]:
        """One generateContent call: a queued replay, an injected fault, or the fake model's answer, billed.

        `vertex` is a Vertex AI call's context (`vertex_call`): the answer then takes Vertex's
        shape, and the request's and billing records carry the context and the traffic type.
        """
        config = self.config
        record: dict[str, Any] = {"model": model, "body": request, **(vertex or {})}
        self.requests.append(record)
        self.stats["requests"] += 1
        if self.replays:  # a recorded answer of Google's, billed as Google bills it: by its usage, if it has counts
            response = self.replays.popleft()
            usage = response.get("usageMetadata") or {}
            if any(name in usage for name in (*BILLED_USAGE_FIELDS, "totalTokenCount")):
                billed = self._bill(response, truncated=False, missing_usage=False, rejection=None)
                billed.update(vertex_billing(vertex, usage))
            self.stats["replayed"] += 1
            return 200, response
        delay = config.latency_ms + self.random.uniform(0, config.latency_jitter_ms)
        if delay:
            await asyncio.sleep(delay / 1000)
        roll = self.random.random()
        for outcome, rate in (
            ("429", config.rate_429),
            ("500", config.rate_500),
            ("503", config.rate_503),
            ("400", config.rate_400),
            ("slow", config.rate_slow),
        ):
            if roll < rate:
                self.stats[f"fault_{outcome}"] += 1
                return await self._fault(outcome)
            roll -= rate
        rejection = self._rejection(request)
        response = self.model_response(model, request, rejection)
        if vertex is not None:
            response = vertex_response(response, self._traffic_type())
            record["traffic_type"] = response["usageMetadata"]["trafficType"]
            self.stats[f"traffic:{record['traffic_type']}"] += 1
        if rejection:
            self.stats[f"rejection_{rejection}"] += 1
        usage = response["usageMetadata"]
        truncated = self.random.random() < config.rate_truncated
        missing_usage = not truncated and self.random.random() < config.rate_missing_usage
        billed = self._bill(response, truncated=truncated, missing_usage=missing_usage, rejection=rejection)
        billed.update(vertex_billing(vertex, usage))
        if truncated:
            self.stats["fault_truncated"] += 1
            whole = json.dumps(response).encode()
            return 200, whole[: len(whole) // 2]
        if missing_usage:
            self.stats["missing_usage"] += 1
            del response["usageMetadata"]
        self.stats["ok"] += 1
        self.stats[f"ok:{model}"] += 1
        record["usageMetadata"] = usage if not missing_usage else None
        return 200, response

    def _rejection(self, request: dict) -> str | None:
        """Which unusable answer this request gets, if any: a function of the request and the seed.

        Real models at temperature 0 give an identical request the identical answer, so the
        roll hashes the whole body: a retry that changes nothing is rejected again; one that
        changes the prompt or the sampling seed rolls anew.
        """
        config = self.config
        tools = bool(request.get("tools"))
        kinds = [
            ("max_tokens", config.rate_max_tokens),
            ("safety", config.rate_safety),
            ("blocked_prompt", config.rate_blocked_prompt),
        ]
        kinds += (
            [
                ("undeclared_tool", config.rate_undeclared_tool),
                ("bad_arguments", config.rate_bad_arguments),
                ("malformed_function_call", config.rate_malformed_function_call),
            ]
            if tools
            else [("off_format", config.rate_off_format)]
        )
        if not any(rate for _, rate in kinds):
            return None
        digest = hashlib.sha256(json.dumps([request, config.seed], sort_keys=True).encode()).digest()
        roll = int.from_bytes(digest[:8], "big") / 2**64
        for kind, rate in kinds:
            if roll < rate:
                return kind
            roll -= rate
        return None

    def _bill(
        self, response: dict, truncated: bool, missing_usage: bool, rejection: str | None, processing: str = "standard"
    ) -> dict:
        """The provider's own record: every 200 it produced is billed, whatever reaches the client; returns it."""
        usage = response["usageMetadata"]
        record = {
            "surface": GEMINI_API_SURFACE,
            "response_id": response.get("responseId"),
            "model": normalized_model(response["modelVersion"]),
            "at": time.time(),
            "usage": usage,
            **{name: usage.get(name, 0) for name in BILLED_USAGE_FIELDS},
            "truncated": truncated,
            "missing_usage": missing_usage,
            "rejection": rejection,
            "processing": processing,
        }
        self.billing.append(record)
        return record

    async def _fault(self, outcome: str) -> tuple[int, dict]:
        if outcome == "429":
            error = _error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")
            error["error"]["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.config.retry_delay_s}s"}
            ]
            return 429, error
        if outcome == "500":
            return 500, _error(500, "An internal error has occurred.", "INTERNAL")
        if outcome == "503":
            return 503, _error(503, "The model is overloaded. Please try again later.", "UNAVAILABLE")
        if outcome == "400":
            return 400, _error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT")
        await asyncio.sleep(self.config.slow_s)
        return 504, _error(504, "Deadline exceeded.", "DEADLINE_EXCEEDED")

    def model_response(self, model: str, request: dict, rejection: str | None = None) -> dict:
        system = " ".join(p.get("text", "") for p in (request.get("systemInstruction") or {}).get("parts", []))
        texts = [p.get("text", "") for c in request.get("contents", []) for p in c.get("parts", [])]
        tools = request.get("tools") or []
        declarations = [d for tool in tools for d in tool.get("functionDeclarations", [])]
        # The turn is the last part of the first contents that are not a reminder after a rejection.
        turn_texts = [
            p.get("text", "")
            for c in request.get("contents", [])
            for p in c.get("parts", [])
            if not p.get("text", "").startswith(REMINDER_PREFIX)
        ]
        last = turn_texts[-1] if turn_texts else ""
        if declarations:
            call = choose_tool(last, declarations)
            part: dict[str, Any] = {"functionCall": call} if call else {"text": "No tool is needed for this request."}
            output_text = json.dumps(call) if call else part["text"]
        else:
            cleaned, changes = clean_text(last)
            confidence = round(max(0.5, 0.99 - 0.04 * len(changes)), 2)
            output_text = json.dumps({"cleaned_text": cleaned, "confidence": confidence, "changes": changes})
            part = {"text": output_text}
        finish, parts, feedback = "STOP", [part], None
        if rejection == "off_format":
            output_text = f"Sure! Here is the cleaned turn: {clean_text(last)[0]}"
            parts = [{"text": output_text}]
        elif rejection == "max_tokens":
            output_text = output_text[: max(1, len(output_text) // 3)]
            finish, parts = "MAX_TOKENS", [{"text": output_text}]
        elif rejection == "safety":
            finish, parts, output_text = "SAFETY", [], ""
        elif rejection == "blocked_prompt":
            feedback, output_text = {"blockReason": "PROHIBITED_CONTENT"}, ""
        elif rejection == "undeclared_tool":
            parts = [{"functionCall": {"name": "book_flight", "args": {"destination": last[:40]}}}]
            output_text = json.dumps(parts[0]["functionCall"])
        elif rejection == "bad_arguments":
            parts = [{"functionCall": {"name": "place_order", "args": {"quantity": "several"}}}]
            output_text = json.dumps(parts[0]["functionCall"])
        elif rejection == "malformed_function_call":
            finish, parts, output_text = "MALFORMED_FUNCTION_CALL", [], ""
        tools_text = json.dumps(tools, sort_keys=True) if tools else ""
        prefix_tokens = count_tokens(system) + count_tokens(tools_text)
        prompt_tokens = prefix_tokens + sum(count_tokens(t) for t in texts)
        candidate_tokens = count_tokens(output_text)
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": candidate_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        }
        total = prompt_tokens + candidate_tokens
        thoughts = self._thinking_tokens(model, request, candidate_tokens) if feedback is None else 0
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
            total += thoughts
        prefix = (model, system + tools_text)
        if prefix in self.seen_prefixes and prefix_tokens >= self.config.implicit_cache_min_tokens:
            usage["cachedContentTokenCount"] = prefix_tokens
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": prefix_tokens}]
        self.seen_prefixes.add(prefix)
        if any("googleSearch" in tool or "google_search" in tool for tool in tools):
            usage["toolUsePromptTokenCount"] = 50
            total += 50
        usage["totalTokenCount"] = total
        served = self.aliases.get(model, model)
        response: dict[str, Any] = {
            "usageMetadata": usage,
            "modelVersion": served,
            "responseId": f"local-{uuid.uuid4().hex}",
        }
        if feedback:
            response["promptFeedback"] = feedback
        else:
            content = {"role": "model", "parts": parts} if parts else {"role": "model"}
            response["candidates"] = [{"content": content, "finishReason": finish, "index": 0}]
        return response

    def _thinking_tokens(self, model: str, request: dict, candidate_tokens: int) -> int:
        """Thinking models think unless told not to; lite models only when given a budget."""
        thinking = (request.get("generationConfig") or {}).get("thinkingConfig") or {}
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))  # the SDK sends the latter
        if budget == 0 or ("lite" in model and not budget):
            return 0
        thoughts = 3 * candidate_tokens + 24
        return min(thoughts, budget) if budget and budget > 0 else thoughts


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def parse_aliases(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def label_problem(labels: Any) -> str | None:
    """Why a request's `labels` break Google's label rules, or None (at most 64; keys of 1 to 63 and values of at
    most 63 lowercase letters, digits, `_` or `-`, international letters allowed; a key starts with a letter)."""
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        return f"labels must be an object of at most {MAX_LABELS} string keys and values"
    for key, value in labels.items():
        fits = isinstance(value, str) and LABEL_KEY.match(key) and LABEL_VALUE.match(value)
        if not fits or key != key.lower() or value != value.lower():
            return f"label {key!r}: keys and values take lowercase letters, digits, '_' and '-' (at most 63)"
    return None


def vertex_token_count(request: dict) -> dict:
    """Vertex's countTokens answer: the prompt's tokens (system instruction, tools, contents) and its billable
    characters (those that are not whitespace)."""
    system = " ".join(p.get("text", "") for p in (request.get("systemInstruction") or {}).get("parts", []))
    texts = [system, *(p.get("text", "") for c in request.get("contents", []) for p in c.get("parts", []))]
    tools = json.dumps(request["tools"], sort_keys=True) if request.get("tools") else ""
    total = sum(count_tokens(text) for text in (*texts, tools))
    return {
        "totalTokens": total,
        "totalBillableCharacters": sum(len("".join(text.split())) for text in texts),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
    }


def vertex_response(response: dict, traffic: str) -> dict:
    """The fake model's answer as Vertex AI sends it, its keys in Vertex's order.

    `usageMetadata` gains `trafficType` and per-modality candidate counts; `createTime` is the
    answer's RFC 3339 UTC time to the microsecond and `responseId` a 23-character URL-safe id, as
    in a recorded Vertex body (vercel/ai `packages/google/src/__fixtures__/google-vertex-stream-
    tool-call-arguments-nested.1.chunks.txt`, last line; kept as
    `cost_pipeline_tests/fixtures/responses/vertex_gemini-3.1-pro-preview_stream_final.json`).
    """
    usage = {**response["usageMetadata"], "trafficType": traffic}
    if usage.get("candidatesTokenCount"):
        usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage["candidatesTokenCount"]}]
    shaped = {key: response[key] for key in ("candidates", "promptFeedback") if key in response}
    return {
        **shaped,
        "usageMetadata": usage,
        "modelVersion": response["modelVersion"],
        "createTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "responseId": secrets.token_urlsafe(17),
    }


def vertex_billing(vertex: dict | None, usage: dict) -> dict:
    """What a Vertex call adds to its billing record: surface, project, location, labels and the traffic type
    served (as the answer's `usageMetadata` named it; on demand when it named none). Empty for the Gemini API."""
    if vertex is None:
        return {}
    return {
        **{key: vertex[key] for key in ("surface", "project", "location", "labels")},
        "traffic_type": usage.get("trafficType") or ON_DEMAND,
    }


def build_server(config: ServerConfig, port: int = 0) -> uvicorn.Server:
    """A uvicorn server for the app on loopback; `port=0` takes any free port."""
    return uvicorn.Server(
        uvicorn.Config(
            GeminiLikeServer(config),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            backlog=2048,
            timeout_keep_alive=30,
            lifespan="off",
        )
    )


def serve(config: ServerConfig, port: int) -> None:
    """Run until interrupted, printing the bound address as the first line of output."""
    server = build_server(config, port)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        print(f"serving Gemini-compatible API on http://127.0.0.1:{bound}", flush=True)
        await task

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a Gemini-compatible API on loopback.")
    parser.add_argument("--port", type=int, default=0)
    config_arguments(parser)
    args = parser.parse_args(argv)
    serve(config_from(args), args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
