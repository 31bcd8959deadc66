"""The console script: `generate` is deterministic, `demo` runs a day end to end."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from cost_pipeline.cli import main
from cost_pipeline.ingest.landing import read_landing_day

from .conftest import run_demo

CLI = str(Path(sys.executable).with_name("cost-pipeline"))


def test_generate_is_deterministic_for_a_seed(tmp_path, capsys):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        assert (
            main(
                [
                    "generate",
                    "--start",
                    "2026-11-01",
                    "--days",
                    "2",
                    "--turns-per-day",
                    "300",
                    "--seed",
                    str(seed),
                    "--landing",
                    str(tmp_path / name),
                ]
            )
            == 0
        )

    def files(name):
        return {p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*.jsonl")}

    assert files("a") == files("b")
    assert files("a") != files("c")
    assert "2026-11-02: 300 turns, 9 malformed lines" in capsys.readouterr().out


def test_generated_days_read_like_speech_and_repeat_user_texts(tmp_path):
    main(["generate", "--start", "2026-11-01", "--turns-per-day", "2000", "--landing", str(tmp_path)])
    day = read_landing_day(tmp_path / "2026-11-01")
    user_texts = [t.text for t in day.turns if t.speaker == "User"]
    repeated_share = 1 - len(set(user_texts)) / len(user_texts)
    assert len(day.turns) == 2000
    assert 0.2 < repeated_share < 0.45
    assert sum(any(f" {w} " in f" {t} " for w in ("um", "uh", "like")) for t in user_texts) > len(user_texts) / 3
    assert any("-" in word and word.split("-")[0] == word.split("-")[1][:1] for t in user_texts for word in t.split())
    assert len({t.conversation_id for t in day.turns}) > 100


def test_demo_materializes_a_day_and_says_where_to_look(tmp_path):
    env = {
        **os.environ,
        "COST_PIPELINE_DB": str(tmp_path / "demo.duckdb"),
        "COST_PIPELINE_LANDING": str(tmp_path / "landing"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    for name in (
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "COST_PIPELINE_BILLING",
        "COST_PIPELINE_START",
    ):
        env.pop(name, None)
    result = run_demo(env, tmp_path, "2026-11-03", 400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "raw_turns" in result.stdout and "http://127.0.0.1:3000" in result.stdout
    # The local server was the provider: its invoice landed in the billing folder and the ledger matches it.
    assert list((tmp_path / "data" / "billing").glob("local-server-*.csv"))
    assert "the ledger: $" in result.stdout and "matches, line by line" in result.stdout, result.stdout[-2000:]
    with duckdb.connect(env["COST_PIPELINE_DB"], read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM raw_turns WHERE partition_date = '2026-11-03'").fetchone() == (
            400,
        )
    assert any((tmp_path / "home").iterdir()), "the run should be recorded in DAGSTER_HOME for the UI"
    # The totals job also wrote the cost dashboard beside the database, and the demo says where.
    board = tmp_path / "dashboard.html"
    assert board.as_uri() in result.stdout and 'data-figure="spend"' in board.read_text()
    # No setting was rewritten behind a running UI's back.
    assert not (tmp_path / ".env").exists()


def test_a_day_before_the_first_partition_is_refused_before_anything_is_written(tmp_path):
    env = {**os.environ, "COST_PIPELINE_START": "2026-11-01", "COST_PIPELINE_LANDING": str(tmp_path / "landing")}
    result = subprocess.run(
        [CLI, "generate", "--start", "2026-10-31", "--turns-per-day", "10"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "2026-10-31 is before the first daily partition, 2026-11-01 (COST_PIPELINE_START): nothing was written. "
        "Set COST_PIPELINE_START=2026-10-31 in .env (or the environment), then restart `make ui` so it partitions "
        "from there too."
    )
    assert not (tmp_path / "landing").exists() and not (tmp_path / ".env").exists()


def test_serve_model_answers_the_real_sdk_on_the_given_port(tmp_path):
    import socket

    from google import genai
    from google.genai import types

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [CLI, "serve-model", "--port", str(port), "--latency-ms", "1"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert f"http://127.0.0.1:{port}" in server.stdout.readline()
        client = genai.Client(api_key="any", http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{port}"))
        answer = client.models.generate_content(model="gemini-2.5-flash-lite", contents="uh hello hello world")
        assert "Hello world." in answer.text
        assert answer.usage_metadata.prompt_token_count > 0
    finally:
        server.terminate()
        server.wait()


def test_partitions_start_on_a_fixed_day_unless_the_environment_says(monkeypatch):
    from cost_pipeline.config import DEFAULT_START, partitions_start

    monkeypatch.delenv("COST_PIPELINE_START", raising=False)
    assert partitions_start() == DEFAULT_START == "2026-10-01"
    monkeypatch.setenv("COST_PIPELINE_START", "2024-02-29")
    assert partitions_start() == "2024-02-29"
    monkeypatch.setenv("COST_PIPELINE_START", "last tuesday")
    with pytest.raises(ValueError, match="COST_PIPELINE_START='last tuesday' is not a day"):
        partitions_start()


@pytest.mark.parametrize(
    "command",
    [["run", "--day"], ["backfill", "--to", "2026-11-02", "--from"], ["report", "--end", "2026-11-02", "--start"]],
)
def test_a_date_that_does_not_parse_is_named_as_not_a_date(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "2026-13-01"])
    assert exit_.value.code == 2
    assert "not a date (YYYY-MM-DD): '2026-13-01'" in capsys.readouterr().err
