"""Benchmarks at a tiny size, so a bench that breaks fails the suite instead of rotting."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def run_bench(script: str, *args: str) -> str:
    """The bench's output; it must also have recorded its row, as `make bench` has it do (into a file of our own)."""
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "performance.json"
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            env={**os.environ, "BENCH_RESULTS": str(results)},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (row,) = json.loads(results.read_text()).values()
    assert all(row[key] for key in ("what", "figure", "goal", "date", "commit", "machine")), row
    assert "**" in row["figure"], "the headline figure is in bold"
    return result.stdout


def test_the_performance_page_is_the_recorded_figures_and_a_bench_run_by_hand_changes_nothing(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import performance_page
    import results

    recorded = json.loads((REPO / "docs" / "performance.json").read_text())
    assert (REPO / "docs" / "performance.md").read_text() == performance_page.page(recorded)
    # gemini_overhead.py (--instructions), crash_resume.py and backfill_overlap.py (--store lake) record two each.
    assert len(recorded) == len(list((REPO / "bench").glob("*.py"))) - 2 + 3
    os.environ.pop(results.RESULTS_ENV, None)
    results.record("x.py", "what", "**1**", "1")
    assert json.loads((REPO / "docs" / "performance.json").read_text()) == recorded


@pytest.mark.slow
def test_invoice_match_accounts_for_every_billed_cent_at_a_tiny_size():
    figures = json.loads(run_bench("invoice_match.py", "--turns", "60", "--shares", "0.3").splitlines()[-1])
    (figure,) = figures
    assert figure["rejected"] > 0 and figure["missing_share"] == 0
    assert figure["missing_share_before"] > 0, "accounting only accepted answers misses the rejected ones"


@pytest.mark.slow
def test_gemini_overhead_runs_at_a_tiny_size():
    output = run_bench("gemini_overhead.py", "--turns", "300", "--concurrency", "16", "--rounds", "2")
    assert (
        "round 1 (pipeline first):" in output and "round 2 (bare first):" in output and "median of 2 rounds" in output
    )
    assert "bare loop sending dict contents as the stage does" in output


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args,printed",
    [
        ("partition_write.py", ["--rows", "2000"], "rows/s"),
        ("rate_limit.py", ["--calls", "30", "--rpm", "6000", "--latency-ms", "1"], "RPM"),
        ("rollup.py", ["--days", "2", "--calls", "2000"], "evaluation_costs"),
        ("ledger_growth.py", ["--rows", "1000", "--batch", "50"], "rows: ledger insert"),
    ],
)
def test_every_other_bench_runs_at_a_tiny_size(script, args, printed):
    assert printed in run_bench(script, *args)


def test_recorded_responses_are_priced_as_genai_prices_prices_them_at_a_tiny_size():
    figures = json.loads(run_bench("recorded_responses.py", "--limit", "12").splitlines()[-1])
    assert figures["bodies"] == 12 and figures["match"] == 12 - figures["unknown_without_counts"] > 0
    assert figures["under"] == figures["over"] == figures["estimated_without_counts"] == 0


@pytest.mark.slow
def test_crash_resume_runs_on_the_lake_at_a_tiny_size_and_repeats_only_calls_in_flight():
    figures = json.loads(
        run_bench("crash_resume.py", "--turns", "400", "--latency-ms", "20", "--store", "lake").splitlines()[-1]
    )
    assert figures["killed_run_calls"] >= figures["clean_calls"] // 2
    assert figures["missing_from_ledger"] <= figures["billing_unknown"]
    # In flight at the kill (up to 64), and calls that had failed, which a re-run tries again; at 6,000 turns 1.004x.
    assert figures["ratio"] < 1.15


@pytest.mark.slow
def test_lake_store_compares_the_stores_at_a_tiny_size():
    output = run_bench(
        "lake_store.py",
        "--rows",
        "2000",
        "--ledger-rows",
        "5000",
        "--batch",
        "20",
        "--checkpoints",
        "3",
        "--rounds",
        "1",
    )
    assert "lake / file time:" in output
    # The ledger's files: built, timed checkpoint, 3 more checkpoints; then merged into one.
    assert "llm_attempts               5 -> 1" in output, "the upkeep merges the checkpoints' files"


@pytest.mark.slow
def test_backfill_overlap_runs_on_the_lake_at_a_tiny_size_without_lock_failures():
    # The 0.35 goal is for 8 days x 2,000 turns at 200 ms; at this size start-up noise dominates the ratio. The file's
    # backfill through the daemon is test_backfill.py's.
    figures = json.loads(
        run_bench(
            "backfill_overlap.py",
            "--days",
            "2",
            "--turns",
            "20",
            "--latency-ms",
            "20",
            "--parallel",
            "2",
            "--store",
            "lake",
        ).splitlines()[-1]
    )
    assert figures["failed_runs"] == 0, [mode["failure_reasons"] for mode in figures["modes"]]
    assert figures["lock_failures"] == 0, [mode["lock_failure_messages"] for mode in figures["modes"]]
    assert figures["ratio"] > 0 and figures["sequential_s"] > 0 and figures["parallel_s"] > 0


@pytest.mark.slow
def test_peak_rss_counts_the_writer_process_too_at_a_tiny_size():
    # Chunks of 64 rows: both days are larger than one chunk, so each starts a writer process.
    figures = json.loads(run_bench("peak_rss.py", "--sizes", "150,300", "--staged-chunk-rows", "64").splitlines()[-1])
    assert set(figures["peak_rss_mb"]) == {"150", "300"}
    for size, writer_mb in figures["writer_process_mb"].items():
        assert 0 < writer_mb < figures["peak_rss_mb"][size], "memory moved to the writer process is still counted"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is a system package `make test` installs")
def test_gemini_overhead_counts_instructions_at_a_tiny_size(tmp_path):
    """The --instructions mode's parts: a landed day and its requests, the bare side counted under callgrind, and the
    step run with the stretched intervals it is counted with (natively here: under callgrind it takes minutes)."""
    sys.path.insert(0, str(REPO / "bench"))
    import gemini_overhead as bench

    from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server

    with running_local_server(ServerConfig()) as url:
        folder = tmp_path / "day"
        bench.land_day(folder, 8)
        requests = bench.rehearse(folder, url, 4)
        assert len(requests) >= 8 and pickle.loads((folder / "requests.pickle").read_bytes()) == requests
        bare = bench.counted_instructions("bare", folder, url, 4, 8, tmp_path / "callgrind.bare")
        assert 1e9 < bare < 1e11, bare  # importing google-genai alone is billions
        stretched = {"checkpoint_every_s": 250.0, "progress_every_s": 1500.0, "staged_chunk_rows": 4}
        figures = bench.run_child("pipeline", folder, url, 4, stage_config=stretched)
        assert figures["seconds"] > 0 and figures["writer_cpu"] > 0, "the writer process starts at staged_chunk_rows 4"
        assert 0 < figures["loop_cpu"] < figures["cpu"], "the loop's own thread is timed, a part of the step's process"


@pytest.mark.slow
def test_vertex_labels_sides_differ_only_in_the_labels_they_send(tmp_path):
    """vertex_labels.py's three sides, run natively (under callgrind they take minutes): the Gemini API's paths, and
    Vertex AI's through ADC the local server refreshes, with every request labelled, or none."""
    sys.path.insert(0, str(REPO / "bench"))
    import gemini_overhead as bench

    from cost_pipeline.gemini.local_endpoint import ServerConfig, admin, running_local_server

    bench.land_day(tmp_path / "landed", 6)
    sent = {}
    with running_local_server(ServerConfig()) as url:
        for side in ("pipeline", "pipeline-vertex", "pipeline-vertex-unlabelled"):
            shutil.copytree(tmp_path / "landed", tmp_path / side)
            admin(url, "/admin/reset", {})
            bench.run_child(side, tmp_path / side, url, 4)
            sent[side] = [r for r in admin(url, "/admin/requests")["requests"] if r.get("status") != 401]
    assert sent["pipeline"] and all(r.get("surface") != "vertex" for r in sent["pipeline"])
    assert len(sent["pipeline-vertex"]) == len(sent["pipeline-vertex-unlabelled"]) == len(sent["pipeline"])
    assert all(r["surface"] == "vertex" and r["labels"]["pipeline"] == "cost_pipeline" for r in sent["pipeline-vertex"])
    assert all(r["surface"] == "vertex" and not r["labels"] for r in sent["pipeline-vertex-unlabelled"])
