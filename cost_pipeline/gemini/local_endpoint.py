"""Starting the shipped Gemini-compatible server and what it can be told: the pipeline's side of the local endpoint.

The server itself (`cost_pipeline.model_server`) is started in a child process, on its own
core rather than the caller's GIL, by `running_local_server`, which hands it every
`ServerConfig` field as a flag; `admin` talks to a running one (`/admin/stats`,
`/admin/config`, `/admin/billing`, ...). Kept apart from the server, so the Gemini client
that starts one needs none of the server's code.
"""

import argparse
import json
import re
import select
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

SERVER_MODULE = "cost_pipeline.model_server.server"


@dataclass
class ServerConfig:
    """What the fake model does; every field can be changed at run time."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_400: float = 0.0
    rate_slow: float = 0.0
    slow_s: float = 30.0
    rate_missing_usage: float = 0.0
    rate_truncated: float = 0.0
    rate_off_format: float = 0.0
    rate_max_tokens: float = 0.0
    rate_safety: float = 0.0
    rate_blocked_prompt: float = 0.0
    rate_undeclared_tool: float = 0.0
    rate_bad_arguments: float = 0.0
    rate_malformed_function_call: float = 0.0
    model_aliases: str = "gemini-flash-lite-latest=gemini-2.5-flash-lite,gemini-flash-latest=gemini-2.5-flash"
    """`alias=model,...`: a request for the alias is served, and billed, as the model (its modelVersion)."""
    retry_delay_s: float = 0.2
    implicit_cache_min_tokens: int = 64
    batch_delay_s: float = 0.0
    """How long a batch job stays pending before it completes (real ones take minutes to 24 hours)."""
    rate_batch_error: float = 0.0
    """Share of the requests inside a batch that come back as an error instead of a response (not billed)."""
    rate_flex: float = 0.0
    """Share of Vertex AI answers served (and billed) as `trafficType` ON_DEMAND_FLEX."""
    rate_priority: float = 0.0
    """Share of Vertex AI answers served (and billed) as `trafficType` ON_DEMAND_PRIORITY."""
    rate_provisioned: float = 0.0
    """Share of Vertex AI answers served from provisioned throughput (PROVISIONED_THROUGHPUT: no per-token bill)."""
    seed: int = 0


@contextmanager
def running_local_server(config: ServerConfig, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Run the server in a child process (its own core, not the caller's GIL); yields its URL."""
    flags = [f"--{item.name.replace('_', '-')}={getattr(config, item.name)}" for item in fields(ServerConfig)]
    errors = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", SERVER_MODULE, "--port", "0", *flags], stdout=subprocess.PIPE, stderr=errors, text=True
    )
    try:
        stdout = process.stdout
        if stdout is None:
            raise RuntimeError("local Gemini server started without its output pipe")
        ready = select.select([stdout], [], [], startup_timeout_s)[0]
        line = stdout.readline() if ready else ""
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not found:
            process.kill()
            process.wait()
            errors.seek(0)
            raise RuntimeError(f"local Gemini server did not start: {line or errors.read()[-2000:]}")
        yield found.group(0)
    finally:
        errors.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per `ServerConfig` field."""
    for item in fields(ServerConfig):
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=type(item.default), default=item.default)


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(**{item.name: getattr(args, item.name) for item in fields(ServerConfig)})


def admin(url: str, path: str, payload: dict | None = None) -> dict:
    """Call a running server's admin API (`/admin/stats`, `/admin/billing`, `/admin/reset`, ...): GET, or POST
    `payload`."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url + path, data=data, method="GET" if data is None else "POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


LOCAL_CLIENT_ID, LOCAL_CLIENT_SECRET, LOCAL_REFRESH_TOKEN = (
    "local-client",
    "client-secret-7f3a9c",
    "refresh-token-91c2e4",
)
"""The made-up OAuth client and refresh token of `local_credentials_file` (the server accepts any non-empty ones)."""


def local_credentials_file(folder: Path, server_url: str) -> Path:
    """Application Default Credentials for the local server's Vertex paths: an `external_account_authorized_user`
    file (the kind `gcloud auth application-default login` writes for a workforce identity) whose token URL is the
    server's `/token`, where google-auth refreshes it as it would at Google's (it ignores an `authorized_user`
    file's token URL)."""
    path = folder / "application_default_credentials.json"
    path.write_text(
        json.dumps(
            {
                "type": "external_account_authorized_user",
                "audience": "//iam.googleapis.com/locations/global/workforcePools/local-pool/providers/local",
                "client_id": LOCAL_CLIENT_ID,
                "client_secret": LOCAL_CLIENT_SECRET,
                "refresh_token": LOCAL_REFRESH_TOKEN,
                "token_url": f"{server_url}/token",
            }
        )
    )
    return path
