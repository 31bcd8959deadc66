"""Achieved request rate under a requests-per-minute limit, against a server with real latency.

Sends N unique calls (default 2,000) through `GeminiSession` with the given limit
(default 600 RPM) to the shipped server at 200 ms latency, and prints the achieved
RPM as a fraction of the limit (goal >= 0.95) and the busiest 60-second window (which
must not exceed the limit).

    python bench/rate_limit.py [--calls 2000] [--rpm 600] [--latency-ms 200]
"""

import argparse
import asyncio
import bisect
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("COST_PIPELINE_START", "2026-01-01")  # keeps the fixed bench days inside the partitions

from results import record  # noqa: E402

from cost_pipeline.gemini.cache import ResponseCache
from cost_pipeline.gemini.client import CallTag, GeminiSession
from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server
from cost_pipeline.gemini.prompts import function_request
from cost_pipeline.gemini.settings import EndpointSettings, GeminiSettings, RateLimits


async def run(url: str, calls: int, rpm: int, concurrency: int, database: Path) -> tuple[float, list[float]]:
    settings = GeminiSettings(
        endpoint=EndpointSettings(base_url=url), limits=RateLimits(requests_per_minute=rpm, max_concurrency=concurrency)
    )
    session = GeminiSession(settings, ResponseCache(database, enabled=False))
    sent_at: list[float] = []

    async def one(index: int) -> None:
        outcome = await session.call(
            function_request(settings.models.function_model, f"Search the web for topic {index}.", None),
            "",
            CallTag(f"bench-{index}", "bench", f"turn-{index}"),
        )
        assert outcome.status == "ok", outcome.error
        sent_at.append(time.perf_counter() - outcome.latency_ms / 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.perf_counter() - started
    await session.aclose()
    return elapsed, sorted(t - started for t in sent_at)


def busiest_minute(times: list[float]) -> int:
    return max(bisect.bisect_left(times, t + 60) - i for i, t in enumerate(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_local_server(ServerConfig(latency_ms=args.latency_ms)) as url:
        elapsed, sent = asyncio.run(run(url, args.calls, args.rpm, args.concurrency, Path(folder) / "x.duckdb"))
    achieved = args.calls / (sent[-1] - sent[0]) * 60 if len(sent) > 1 else 0.0
    print(
        f"{args.calls:,} calls, limit {args.rpm} RPM, server latency {args.latency_ms:.0f} ms, "
        f"concurrency {args.concurrency}"
    )
    print(
        f"elapsed {elapsed:.1f} s; achieved {achieved:.0f} RPM between first and last send = "
        f"{achieved / args.rpm:.3f} of the limit (goal >= 0.95)"
    )
    print(f"busiest 60 s window: {busiest_minute(sent)} requests (limit {args.rpm})")
    record(
        "rate_limit.py",
        f"rate limit: {args.rpm} RPM, {args.latency_ms:.0f} ms server latency, {args.calls:,} calls",
        f"{achieved:.0f} RPM, **{achieved / args.rpm:.3f}** of the limit; busiest 60 s window {busiest_minute(sent)}",
        "<= 1.0",
    )


if __name__ == "__main__":
    main()
