"""Arrow's buffers from the C library's malloc, not from the mimalloc that pyarrow bundles.

Why: a day's steps build and free Arrow buffers thousands of times (each chunk staged to
Parquet, the day's turns read back a record batch at a time, frames converted), from
several threads, and mimalloc keeps tens of megabytes resident beyond what Arrow holds;
the system allocator returns them (`bench/peak_rss.py` shows the peak). No Dagster here:
the assets call it.
"""

import os

import pyarrow as pa

POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def use_system_allocator() -> str:
    """Make the C library's allocator Arrow's default pool, process-wide; returns the pool's backend.

    Buffers allocated before keep the pool they came from. An operator who set
    ARROW_DEFAULT_MEMORY_POOL (Arrow's own switch) keeps that choice.
    """
    if not os.environ.get(POOL_ENV) and pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name
