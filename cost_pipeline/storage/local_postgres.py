"""A throwaway PostgreSQL server from Debian's packages, on a loopback port: for tests and benches of the prod
instance and the lake on one machine, as the real server would be on many."""

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "dagster"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """Debian's PostgreSQL programs (`apt-get install postgresql`; `make test` installs it)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else []
    if not found:
        raise FileNotFoundError("Debian's postgresql is missing: apt-get install postgresql (make test installs it)")
    return found[-1]


def as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root; run its programs as the `postgres` user the package created."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@contextmanager
def running_postgres(port: int, databases: tuple[str, ...] = ("dagster", "lake")) -> Iterator[str]:
    """A fresh cluster on `port` with `databases`, trusting loopback connections as user `dagster`; yields the
    libpq connection string of its `postgres` database. Stopped and removed on exit."""
    import psycopg2

    bin_folder = postgres_bin()
    # Outside a root-only temp tree, so the postgres user can reach it.
    cluster = Path(tempfile.mkdtemp(prefix="cost-pipeline-pg-"))
    data, sockets = cluster / "data", cluster / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(cluster, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    subprocess.run(
        as_postgres(str(bin_folder / "initdb"), "-D", str(data), "-U", USER, "--auth=trust"),
        check=True,
        capture_output=True,
    )
    start = [str(bin_folder / "pg_ctl"), "-D", str(data), "-w", "-l", str(cluster / "pg.log")]
    subprocess.run(
        as_postgres(*start, "-o", f"-h 127.0.0.1 -p {port} -k {sockets}", "start"), check=True, capture_output=True
    )
    try:
        dsn = f"host=127.0.0.1 port={port} user={USER} dbname=postgres"
        connection = psycopg2.connect(dsn)
        connection.autocommit = True
        for name in databases:
            connection.cursor().execute(f"CREATE DATABASE {name}")
        connection.close()
        yield dsn
    finally:
        stop = [str(bin_folder / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
        subprocess.run(as_postgres(*stop), capture_output=True)
        shutil.rmtree(cluster, ignore_errors=True)
