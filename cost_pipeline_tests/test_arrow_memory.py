"""Arrow's allocator: the C library's, unless the operator chose another with Arrow's own switch."""

import subprocess
import sys

CHOOSE = """
import pyarrow as pa
from cost_pipeline.storage.arrow_memory import use_system_allocator
before = pa.default_memory_pool().backend_name
print(before, use_system_allocator(), pa.default_memory_pool().backend_name)
"""


def run_fresh(env_pool: str | None) -> list[str]:
    """Backends before, returned and after, in a fresh process (the pool is process-wide)."""
    env = {"PATH": "/usr/bin:/bin"} | ({"ARROW_DEFAULT_MEMORY_POOL": env_pool} if env_pool else {})
    done = subprocess.run([sys.executable, "-c", CHOOSE], capture_output=True, text=True, env=env, check=True)
    return done.stdout.split()


def test_arrow_allocates_from_the_system_allocator_after_the_switch():
    before, returned, after = run_fresh(None)
    assert before != "system", "pyarrow's default pool changed: this module may no longer be needed"
    assert returned == after == "system"


def test_an_operators_choice_of_pool_is_kept():
    before, returned, after = run_fresh("jemalloc")
    assert before == returned == after == "jemalloc"
