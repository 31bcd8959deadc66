"""DuckLake: one shared store for runs on any number of machines.

The warehouse `ducklake:postgres:<libpq connection string>` is a DuckLake catalog in
PostgreSQL, its data Parquet files under a folder or an object store URL (`s3://`, `gs://`).
Every process opens an in-memory DuckDB, loads the extensions from their wheels on the
package index (never downloaded at run time), attaches the lake and uses it as its default
database, so every query written for the DuckDB file runs unchanged.

Writers take turns, as on the DuckDB file: a writing connection holds a PostgreSQL advisory
lock for its life, so a partition's replace is one DuckLake transaction no other writer
interleaves with (DuckLake's own conflict check is per table, and two replaces of a new day
would both commit). Readers take no lock: each query reads one snapshot. A killed writer's
lock dies with its PostgreSQL session, and its unfinished transaction with it.
"""

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

LAKE_PREFIX = "ducklake:postgres:"
LAKE_DATA_ENV = "COST_PIPELINE_LAKE_DATA"
"""Where the lake's Parquet files go: a folder, or an `s3://` / `gs://` URL. Needed by the run that creates the
catalog; the catalog remembers it for every later one."""
LAKE_NAME = "lake"
EXTENSION_WHEELS = {
    "ducklake": ("duckdb_extension_ducklake", "ducklake"),
    "postgres_scanner": ("duckdb_extension_postgres", "postgres"),
    "httpfs": ("duckdb_extension_httpfs", "httpfs"),
}
"""DuckDB extension: (the wheel's package, its file's name). DuckDB finds an extension's entry point from the file
name, and the postgres wheel's `postgres.duckdb_extension` is the `postgres_scanner` extension."""
WRITER_LOCK = "cost_pipeline writer"
CATALOG_LOCK = "cost_pipeline catalog"


class MissingExtension(RuntimeError):
    """A DuckDB extension the lake needs is not installed from its wheel."""


class LakeBusy(TimeoutError):
    """Another writer kept the lake's writer lock for longer than we were willing to wait."""


def is_lake(location: str | Path) -> bool:
    return str(location).startswith(LAKE_PREFIX)


def store_exists(database: str | Path) -> bool:
    """Whether there is a store to read yet: a lake always is (its first connection creates the catalog)."""
    return is_lake(database) or Path(database).exists()


SCRATCH_ENV = "COST_PIPELINE_SCRATCH"


def local_folder(database: str | Path, suffix: str) -> Path:
    """A folder of this machine's for files that belong to `database` (spools, staging): beside a DuckDB file, so
    they move with it; for the lake, under COST_PIPELINE_SCRATCH (default: the temp folder), one per lake."""
    if not is_lake(database):
        path = Path(database)
        return path.with_name(path.name + suffix)
    digest = hashlib.sha256(catalog_dsn(str(database)).encode()).hexdigest()[:12]
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / f"cost_pipeline-lake-{digest}{suffix}"


def catalog_name(database: str | Path) -> str:
    """The store's name in a table's qualified name (`catalog.schema.table`): the file's stem, or the lake's."""
    return LAKE_NAME if is_lake(database) else Path(database).stem


def catalog_dsn(location: str) -> str:
    """The libpq connection string of the lake's PostgreSQL catalog."""
    return str(location).removeprefix(LAKE_PREFIX)


def describe(location: str | Path) -> str:
    """The store as a run log names it, with no password."""
    if not is_lake(location):
        return f"DuckDB file {Path(location).resolve()}"
    words = [word for word in catalog_dsn(str(location)).split() if not word.lower().startswith("password=")]
    return f"DuckLake (catalog PostgreSQL {' '.join(words)})"


def extension_file(extension: str) -> Path:
    """The extension's file in its wheel, for this DuckDB release; one sentence naming the package when absent."""
    package, name = EXTENSION_WHEELS[extension]
    spec = importlib.util.find_spec(package)
    wanted = f"pip install {package.replace('_', '-')}=={duckdb.__version__}"
    if spec is None or spec.origin is None:
        raise MissingExtension(f"the lake needs DuckDB's {extension} extension: {wanted}")
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise MissingExtension(f"{package} has no build for DuckDB {duckdb.__version__}: {wanted}")
    if name == extension:
        return path
    return _renamed_copy(path, extension)


def _renamed_copy(path: Path, extension: str) -> Path:
    """A copy of `path` named for the extension it is, made once per build and replaced atomically (several
    processes may make it at once)."""
    folder = Path(tempfile.gettempdir()) / f"cost_pipeline-duckdb-{duckdb.__version__}"
    target = folder / f"{extension}.duckdb_extension"
    if not target.exists() or target.stat().st_size != path.stat().st_size:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{extension}.{os.getpid()}.{threading.get_ident()}"
        shutil.copyfile(path, partial)
        os.replace(partial, target)
    return target


def data_path_from_env() -> str | None:
    return os.environ.get(LAKE_DATA_ENV) or None


_roots: dict[str, duckdb.DuckDBPyConnection] = {}
_roots_lock = threading.Lock()


def root_connection(location: str) -> duckdb.DuckDBPyConnection:
    """This process's DuckDB with the lake attached (made once: loading the extensions takes a few hundred ms).
    Connections to the lake are its cursors, which share the attachment."""
    with _roots_lock:
        root = _roots.get(location)
        if root is None:
            root = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
            data = data_path_from_env()
            for extension in ("ducklake", "postgres_scanner", *(["httpfs"] if _remote(data) else [])):
                root.execute(f"LOAD '{extension_file(extension)}'")
            options = f" (DATA_PATH '{_quoted(data)}')" if data else ""
            with advisory_lock(catalog_dsn(location), CATALOG_LOCK), _no_password(location):
                root.execute(f"ATTACH '{_quoted(location)}' AS {LAKE_NAME}{options}")  # the first creates the catalog
            _roots[location] = root
        return root


@contextmanager
def lake_connection(
    location: str, *, read_only: bool, timeout_s: float, on_wait: Callable[[str], None] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose default database is the lake; a writer's holds the lake's writer lock while open."""
    cursor = root_connection(location).cursor()
    try:
        cursor.execute(f"USE {LAKE_NAME}")
        with _no_password(location):
            if read_only:
                yield cursor
            else:
                with advisory_lock(catalog_dsn(location), WRITER_LOCK, timeout_s, on_wait):
                    yield cursor
    finally:
        cursor.close()


@contextmanager
def _no_password(location: str) -> Iterator[None]:
    """DuckDB's errors about the catalog may quote its connection string: raised again without the password."""
    try:
        yield
    except duckdb.Error as err:
        secrets = [
            word.split("=", 1)[1] for word in catalog_dsn(location).split() if word.lower().startswith("password=")
        ]
        message = str(err)
        if not any(secret and secret in message for secret in secrets):
            raise
        for secret in secrets:
            message = message.replace(secret, "***")
        raise type(err)(message) from None


@contextmanager
def advisory_lock(
    dsn: str, name: str, timeout_s: float = 120.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """A PostgreSQL session advisory lock on `name`, waited for with backoff: held until the block ends, or the
    process dies (its session goes, and the lock with it)."""
    import psycopg2

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    session = psycopg2.connect(dsn)
    try:
        session.autocommit = True
        started, delay = time.monotonic(), 0.02
        with session.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = cursor.fetchone()
                if row and row[0]:
                    break
                if time.monotonic() - started > timeout_s:
                    raise LakeBusy(f"the lake's {name} lock stayed locked by another process for {timeout_s:.0f}s")
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        if on_wait and time.monotonic() - started > 0.1:
            on_wait(f"waited {time.monotonic() - started:.1f}s for the lake's {name} lock")
        yield
    finally:
        session.close()  # ends the session, which releases its advisory locks


def _remote(data: str | None) -> bool:
    return bool(data) and "://" in str(data)


def _quoted(text: str) -> str:
    return str(text).replace("'", "''")


METADATA = f"__ducklake_metadata_{LAKE_NAME}"
"""The catalog's own tables, as DuckLake attaches them beside the lake."""


def files_per_table(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Live Parquet data files of each of the lake's tables (rows inlined in the catalog have none)."""
    rows = connection.execute(
        f"""
        SELECT t.table_name, count(f.data_file_id)
        FROM {METADATA}.ducklake_table t
        LEFT JOIN {METADATA}.ducklake_data_file f ON f.table_id = t.table_id AND f.end_snapshot IS NULL
        WHERE t.end_snapshot IS NULL GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    return {name: int(count) for name, count in rows}


def snapshot_count(connection: duckdb.DuckDBPyConnection) -> int:
    (count,) = connection.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE_NAME}')").fetchall()[0]
    return int(count)


def stale_snapshots(connection: duckdb.DuckDBPyConnection, keep_days: int) -> int:
    """Snapshots older than `keep_days` other than the current one (which is never expired)."""
    ((count,),) = connection.execute(
        f"""SELECT count(*) FROM ducklake_snapshots('{LAKE_NAME}')
        WHERE snapshot_time < now() - INTERVAL {int(keep_days)} DAY
          AND snapshot_id < (SELECT max(snapshot_id) FROM ducklake_snapshots('{LAKE_NAME}'))"""
    ).fetchall()
    return int(count)


def maintain(connection: duckdb.DuckDBPyConnection, keep_snapshots_days: int) -> dict[str, int]:
    """Merge each table's small files, expire snapshots older than `keep_snapshots_days`, and delete the files no
    snapshot left needs, and files of writers killed mid-write: what DuckLake leaves to its owner. Time travel
    reaches back `keep_snapshots_days`. Run on a writing connection (it holds the writer lock).

    Each DuckLake function is read whole (`SELECT *`): under `count(*)` it does not do all its work."""
    before_files, before_snapshots = sum(files_per_table(connection).values()), snapshot_count(connection)
    connection.execute(f"CALL ducklake_flush_inlined_data('{LAKE_NAME}')")
    merged = connection.execute(f"SELECT * FROM ducklake_merge_adjacent_files('{LAKE_NAME}')").fetchall()
    connection.execute(
        f"SELECT * FROM ducklake_expire_snapshots('{LAKE_NAME}', "
        f"older_than => now() - INTERVAL {int(keep_snapshots_days)} DAY)"
    ).fetchall()
    deleted = connection.execute(f"SELECT * FROM ducklake_cleanup_old_files('{LAKE_NAME}', cleanup_all => true)")
    deleted_files = len(deleted.fetchall())
    # Files of writers killed mid-write, which no snapshot names; no writer is writing while this one holds the lock.
    orphans = connection.execute(f"SELECT * FROM ducklake_delete_orphaned_files('{LAKE_NAME}', cleanup_all => true)")
    return {
        "files_before": before_files,
        "files_after": sum(files_per_table(connection).values()),
        "snapshots_before": before_snapshots,
        "snapshots_after": snapshot_count(connection),
        "tables_merged": len(merged),
        "files_deleted": deleted_files,
        "orphan_files_deleted": len(orphans.fetchall()),
    }
