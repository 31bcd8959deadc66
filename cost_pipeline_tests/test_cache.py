"""The response cache's reads while a day runs: their memory does not follow the table's size."""

import hashlib
import json
import subprocess
import sys

from cost_pipeline.gemini.cache import DDL, TABLE, CachedResponse, ResponseCache
from cost_pipeline.gemini.prompts import TOOLS_DIGEST, LlmRequest, cleaning_request, function_request
from cost_pipeline.gemini.usage import Usage
from cost_pipeline.gemini_step.processing import file_turns
from cost_pipeline.storage.connect import connect

READ_A_CHUNK = """
import hashlib, json, sys
from pathlib import Path
from cost_pipeline.gemini.cache import ResponseCache

def status_mb(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

cache = ResponseCache(sys.argv[1])
cache.read(["warm-up"])  # DuckDB's own start-up (catalog, threads) is not what is measured
resting = status_mb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak below is this read's
found = cache.read([hashlib.sha256(f"text-{i}".encode()).hexdigest() for i in range(0, 1_500_000, 750)])
print(json.dumps({"found": len(found), "peak_above_resting_mb": status_mb("VmHWM") - resting}))
"""


def test_a_chunk_read_of_a_large_cache_stays_within_the_step_memory_limit(tmp_path):
    # 1,500,000 answers: about 100 MB of text hashes that an unbounded DuckDB keeps in its buffer pool as it scans them.
    database = tmp_path / "cache.duckdb"
    with connect(database) as connection:
        connection.execute(DDL)
        connection.execute(f"""
            INSERT INTO {TABLE} SELECT sha256('request-' || i), sha256('text-' || i), 'clean', 'gemini-2.5-flash-lite',
                   '{{"cleaned_text": "turn ' || i || '"}}', 120, 30, 0, 0, 0, 150, 'reported', now(), NULL
            FROM range(1500000) t(i)""")
    read = subprocess.run(
        [sys.executable, "-c", READ_A_CHUNK, str(database)], capture_output=True, text=True, timeout=120
    )
    assert read.returncode == 0, read.stderr[-2000:]
    figures = json.loads(read.stdout.splitlines()[-1])
    assert figures["found"] == 2000
    assert figures["peak_above_resting_mb"] < 85, f"a chunk's cache read grew with the table: {figures}"


def test_memory_keeps_the_newest_entries_and_a_re_remembered_one_counts_as_new(tmp_path):
    cache = ResponseCache(tmp_path / "absent.duckdb", max_entries=3)
    answer = CachedResponse({"cleaned_text": "x"}, Usage(input_tokens=1, total_tokens=1))
    assert cache.remember([(f"h{i}", answer) for i in range(4)]) == 4
    assert [cache.get(f"h{i}") is not None for i in range(4)] == [False, True, True, True]
    cache.remember([("h1", answer), ("h4", answer)])  # h1 is new again, so h2 is now the oldest and goes
    assert [cache.get(f"h{i}") is not None for i in range(5)] == [False, True, False, True, True]


def _answer(text: str) -> tuple[dict, Usage]:
    return {"cleaned_text": text}, Usage(input_tokens=10, output_tokens=2, total_tokens=12)


def test_a_chunk_loads_the_cleaning_filed_under_its_context_not_every_cleaning_of_the_text(tmp_path):
    # A text that recurs all day is cleaned once per conversation, each time with other turns before it.
    cache = ResponseCache(tmp_path / "cache.duckdb")
    for conversation in range(50):
        cache.put(
            f"clean-{conversation}",
            "text-ok",
            "clean",
            "m",
            *_answer(f"Ok {conversation}."),
            context_hash=f"context-{conversation}",
        )
    cache.put("decide-ok", "text-ok", "function", "m", *_answer("Ok."))
    assert cache.write(cache.take_new()) == 51
    fresh = ResponseCache(tmp_path / "cache.duckdb")
    chunk = dict(fresh.read(["text-ok"], ["context-7", "context-unknown"]))
    assert sorted(chunk) == ["clean-7", "decide-ok"]
    assert chunk["clean-7"].result == {"cleaned_text": "Ok 7."}
    assert len(fresh.read(["text-ok"])) == 51, "by text alone (a batch day's one load), every answer of the text"


def test_a_cache_from_before_context_keys_is_read_and_then_written_with_them(tmp_path):
    database = tmp_path / "cache.duckdb"
    with connect(database) as connection:
        connection.execute(DDL.replace(",\n    context_hash VARCHAR", ""))
        connection.execute(
            f"INSERT INTO {TABLE} VALUES ('old-clean', 'text-a', 'clean', 'm', '{{}}', 1, 1, 0, 0, 0, 2, "
            "'reported', now()), ('old-decide', 'text-a', 'function', 'm', '{}', 1, 1, 0, 0, 0, 2, "
            "'reported', now())"
        )
    cache = ResponseCache(database)
    assert [key for key, _ in cache.read(["text-a"], ["context-a"])] == ["old-decide"]
    cache.put("new-clean", "text-a", "clean", "m", *_answer("A."), context_hash="context-a")
    assert cache.write(cache.take_new()) == 1
    assert sorted(key for key, _ in ResponseCache(database).read(["text-a"], ["context-a"])) == [
        "new-clean",
        "old-decide",
    ]


def test_a_cleaning_is_filed_by_its_text_and_the_raw_turns_of_its_context_window_only():
    def filed(*texts, window=2):
        conversation = [
            {"speaker": "User" if i % 2 == 0 else "Assistant", "text": text} for i, text in enumerate(texts)
        ]
        file_turns(conversation, window)
        return conversation[-1]

    ok_after_a, ok_after_b = filed("order pizza", "Done.", "ok"), filed("order coffee", "Done.", "ok")
    assert ok_after_a["text_hash"] == ok_after_b["text_hash"], "the same text"
    assert ok_after_a["context_hash"] != ok_after_b["context_hash"], "other turns before it"
    # Turns older than the window do not enter the request, so they do not enter the key either.
    assert (
        filed("x", "order pizza", "Done.", "ok")["context_hash"]
        == filed("y", "order pizza", "Done.", "ok")["context_hash"]
    )
    assert filed("order pizza", "Done.", "ok", window=0)["context_hash"] == filed("ok", window=0)["context_hash"]


def test_request_hashes_are_the_keys_earlier_runs_wrote():
    # Computed by the json.dumps(..., sort_keys=True) spelling before this one: a cache written then must still hit.
    cleaning = cleaning_request(
        "gemini-2.5-flash-lite",
        "User",
        "um so I I want to book a table",
        [("User", "Hi there."), ("Assistant", "Hello! How can I help?")],
        128,
    )
    function = function_request("gemini-2.5-flash-lite", "Book a table for two.", None)
    assert cleaning.request_hash("local-server") == "c5b17ddc61ded68c924a2e437d58c685c428d7104c067d73d4615a01b63621b4"
    assert (
        function.request_hash("https://generativelanguage.googleapis.com")
        == "7611a2e1cce46292aaf35aac2cacd8691cec98e2f2fdf3455a7dceee6deca003"
    )
    assert (
        cleaning.with_reminder("off-format", 2).request_hash("x")
        == "0d4bba1750cadf89d009a7126253edcd7d5e316c1c0d50c8b12332d67c4d16af"
    )


def test_a_request_hash_from_remembered_settings_is_the_hash_of_the_whole_request_spelled_out():
    """The hash joins the contents to the settings' JSON kept from an earlier request; it must equal the digest of the
    request's canonical JSON in full, for every kind of request, and a config built afresh must not borrow another's."""

    def spelled_out(request, endpoint):
        canonical = json.dumps(
            {
                "endpoint": endpoint,
                "model": request.model,
                "system_instruction": request.system_instruction,
                "tools": TOOLS_DIGEST if request.with_tools else None,
                "contents": request.contents,
                "generation_config": request.generation_config,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    context = [("User", 'He said "hi" \\ bye'), ("Assistant", "Ça va? 🙂")]
    requests = [
        cleaning_request(model, "User", text, context[:window], budget)
        for model in ("gemini-2.5-flash-lite", "gemini-2.5-flash")
        for text in ("um hello", "")
        for window in (0, 2)
        for budget in (None, 0, 512)
    ]
    requests += [
        function_request(model, text, budget)
        for model in ("gemini-2.5-flash-lite", "gemini-2.5-pro")
        for text in ("Book a table.", "x" * 5000)
        for budget in (None, 128)
    ]
    requests += [request.with_reminder("off-format", attempt) for request in requests[:6] for attempt in (2, 3)]
    for _ in range(2):  # the second round hashes from memory
        for request in requests:
            for endpoint in ("local-server", "https://generativelanguage.googleapis.com"):
                assert request.request_hash(endpoint) == spelled_out(request, endpoint)
    afresh = LlmRequest(
        requests[0].stage,
        requests[0].model,
        requests[0].system_instruction,
        requests[0].contents,
        {**requests[0].generation_config, "temperature": 0.5},
    )
    assert (
        afresh.request_hash("local-server")
        == spelled_out(afresh, "local-server")
        != requests[0].request_hash("local-server")
    )
