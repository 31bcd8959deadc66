"""With a key in the environment, the key reaches Gemini's header and nothing else: not DuckDB, not Dagster, not
logs."""

import os

from .conftest import run_demo

FAKE_KEY = "AIzaSy-FAKE-0000-secret-that-must-never-leak-1234"


def test_a_fake_key_is_sent_and_never_stored_or_logged(tmp_path, model_server):
    env = {
        **os.environ,
        "GEMINI_API_KEY": FAKE_KEY,
        "GOOGLE_GEMINI_BASE_URL": model_server.url,
        "COST_PIPELINE_DB": str(tmp_path / "store.duckdb"),
        "COST_PIPELINE_LANDING": str(tmp_path / "landing"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    model_server.configure(rate_400=0.02, rate_500=0.05, seed=4)
    result = run_demo(env, tmp_path, "2026-11-02", 120)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = model_server.stats()
    assert stats["with_api_key"] >= stats["requests"] > 100, (
        "the calls went to the server named by GOOGLE_GEMINI_BASE_URL, with the key"
    )
    assert stats.get("fault_400", 0) > 0, "some errors were raised and stored"
    assert FAKE_KEY not in result.stdout + result.stderr
    leaks = [path for path in tmp_path.rglob("*") if path.is_file() and FAKE_KEY.encode() in path.read_bytes()]
    assert leaks == []
    assert (tmp_path / "store.duckdb").stat().st_size > 0 and any((tmp_path / "home").rglob("*.db"))
