"""Shared fixtures: a temp landing folder and DuckDB file, the shipped model server, and runs of a day."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

# The fixtures' days (2022 to 2026) must stay inside the partitions whatever today is; set before the
# definitions are imported, and inherited by every Dagster subprocess a test starts.
os.environ.setdefault("COST_PIPELINE_START", "2022-01-01")

from cost_pipeline.definitions import all_assets, all_checks
from cost_pipeline.defs.automation import DAILY_SELECTION
from cost_pipeline.defs.gemini.resource import GeminiResource
from cost_pipeline.defs.ingest import assets as ingest
from cost_pipeline.defs.io_manager import DuckDBPartitionIOManager
from cost_pipeline.defs.resources import BillingExports, CostSettings, LandingResource
from cost_pipeline.defs.warehouse import DuckDBWarehouse
from cost_pipeline.gemini.local_endpoint import ServerConfig, running_local_server
from cost_pipeline.ingest.synthetic import generate
from cost_pipeline.storage.local_postgres import free_port, running_postgres

INGEST_ASSETS = dg.load_assets_from_modules([ingest])
REPO = Path(__file__).parents[1]


def dagster_home(path: Path, profile: Path = REPO / ".dagster_home" / "dagster.yaml", initialize: bool = True) -> Path:
    """A DAGSTER_HOME at `path` with the project's instance profile.

    Initializing it once up front matters: Dagster's SQLite storage is created on first
    use, and two processes creating it at once race (an alembic error).
    """
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(profile, path / "dagster.yaml")
    if initialize:
        dg.DagsterInstance.from_config(str(path)).dispose()
    return path


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """One query to a running UI's GraphQL API."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class RunningUI(str):
    """The UI's URL (a str), with the URL of the dashboard `make ui` serves beside it."""

    dashboard: str


@contextmanager
def make_ui(project: Path, env: dict[str, str]) -> Iterator[RunningUI]:
    """`make ui` in `project` on free ports, as a person starts it; yields once the UI's GraphQL answers."""
    ui_port, board_port = free_port(), free_port()
    # -o: the venv is the test's own, already installed; make must not reinstall it.
    process = subprocess.Popen(
        ["make", "-o", ".venv/.installed", "ui", f"UI_PORT={ui_port}", f"DASHBOARD_PORT={board_port}"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = RunningUI(f"http://127.0.0.1:{ui_port}")
    url.dashboard = f"http://127.0.0.1:{board_port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if graphql(url, "{ version }").get("data"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "make ui did not come up"
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a run the daemon launched can outlive a polite stop on a busy machine
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


class ModelServer:
    """The shipped Gemini-compatible server in a child process, reconfigured per test."""

    def __init__(self, url: str):
        self.url = url

    def _send(self, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def configure(self, **changes) -> dict:
        return self._send("/admin/config", changes)

    def reset(self) -> None:
        self._send("/admin/reset", {})
        self.configure(**{k: v for k, v in ServerConfig().__dict__.items()})

    def stats(self) -> dict:
        return self._send("/admin/stats")

    def requests(self) -> list[dict]:
        return self._send("/admin/requests")["requests"]

    def billing(self) -> list[dict]:
        """The provider's own record: one entry per billed 200."""
        return self._send("/admin/billing")["records"]

    def replay(self, bodies: list[dict]) -> None:
        """Answer the next requests with these recorded bodies, in order, billed by their own usage."""
        self._send("/admin/replay", {"bodies": bodies})

    def billing_export(self, project: str = "gemini-api-project") -> str:
        """The server's invoice as Google's would be (another project than the local server's own)."""
        with urllib.request.urlopen(f"{self.url}/admin/billing/export?project={project}", timeout=10) as response:
            return response.read().decode()


@pytest.fixture(scope="session")
def _model_server_url():
    with running_local_server(ServerConfig()) as url:
        yield url


@pytest.fixture
def model_server(_model_server_url) -> ModelServer:
    server = ModelServer(_model_server_url)
    server.reset()
    return server


@pytest.fixture
def landing_root(tmp_path: Path) -> Path:
    root = tmp_path / "landing"
    root.mkdir()
    return root


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


def local_resources(
    landing_root: Path,
    database: Path,
    model_server: ModelServer | None = None,
    costs: CostSettings | None = None,
    **gemini: dict,
) -> dict:
    """The resources of a test run; `gemini` gives sections of the Gemini resource (`{"limits": {...}}`), merged
    over fast retries, the test's model server and database."""
    resources = {
        "io_manager": DuckDBPartitionIOManager(database=str(database)),
        "warehouse": DuckDBWarehouse(database=str(database)),
        "landing": LandingResource(root=str(landing_root)),
        "costs": costs or CostSettings(),
        "billing": BillingExports(folder=str(landing_root.parent / "billing")),
    }
    if model_server is not None:
        sections = {
            # A test that chooses the auto-started local server must not leave its invoice in the repository.
            "endpoint": {"base_url": model_server.url, "local_billing_folder": str(landing_root.parent / "billing")},
            "retries": {"initial_backoff_s": 0.01, "max_backoff_s": 0.2, "timeout_s": 5.0},
            "cache": {"database": str(database)},
        }
        for section, values in gemini.items():
            sections[section] = {**sections.get(section, {}), **values}
        resources["gemini"] = GeminiResource(**sections)
    return resources


def materialize_command(select: str, *partition_and_flags: str) -> list[str]:
    """`dagster asset materialize` of `select` from the project's definitions, as a person or a scheduler runs it."""
    return [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        "cost_pipeline.definitions",
        "--select",
        select,
        *partition_and_flags,
    ]


def materialize_day(
    day: date | str,
    landing_root: Path,
    database: Path,
    model_server: ModelServer | None = None,
    gemini: dict | None = None,
    costs: CostSettings | None = None,
    **kwargs,
) -> dg.ExecuteInProcessResult:
    """A real Dagster run of one partition: ingest only, or every daily asset and check given a model server."""
    if model_server is None:
        return dg.materialize(
            INGEST_ASSETS, partition_key=str(day), resources=local_resources(landing_root, database), **kwargs
        )
    return dg.materialize(
        [*all_assets, *all_checks],
        partition_key=str(day),
        resources=local_resources(landing_root, database, model_server, costs, **(gemini or {})),
        selection=DAILY_SELECTION,
        **kwargs,
    )


THREE_DAYS = [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)]
SMALL_DAYS_COSTS = CostSettings(quarantine_share_warn=0.1)
"""The generator lands one malformed line of each kind a day: 9 in 159 lines is a healthy small day."""


@pytest.fixture(scope="session")
def _three_days_store(tmp_path_factory, _model_server_url):
    """Three real days through every daily asset (two models), built once for the session."""
    folder = tmp_path_factory.mktemp("three_days")
    server = ModelServer(_model_server_url)
    server.reset()
    generate(folder / "landing", THREE_DAYS[0], days=3, turns_per_day=150, seed=17)
    results = [
        materialize_day(
            day,
            folder / "landing",
            folder / "store.duckdb",
            server,
            costs=SMALL_DAYS_COSTS,
            gemini={"models": {"function_model": "gemini-2.5-flash"}},
        )
        for day in THREE_DAYS
    ]
    return folder, results


@pytest.fixture
def three_days(_three_days_store, landing_root, database, model_server):
    """This test's own copy of the three-day store (landing files and DuckDB file)."""
    folder, results = _three_days_store
    shutil.copytree(folder / "landing", landing_root, dirs_exist_ok=True)
    shutil.copy(folder / "store.duckdb", database)
    return results


@pytest.fixture
def postgres() -> Iterator[int]:
    """A throwaway PostgreSQL (Debian's packages) on a loopback port, with databases `dagster` and `lake`; yields
    the port."""
    port = free_port()
    with running_postgres(port):
        yield port


CLI = str(Path(sys.executable).with_name("cost-pipeline"))


def run_demo(env: dict[str, str], cwd: Path, day: str, turns: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """`cost-pipeline demo` for `day` as a person runs it, in `cwd` with `env`; its output captured as text."""
    return subprocess.run(
        [CLI, "demo", "--day", day, "--turns", str(turns)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
