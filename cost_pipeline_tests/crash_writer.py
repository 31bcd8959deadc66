"""Child process for the crash test: writes a large partition, announcing each phase.

    python -m cost_pipeline_tests.crash_writer DATABASE ROWS RUN_ID

Prints `deleting` and `inserting` as the transaction reaches those statements and
`committed` at the end, so the parent can `kill -9` it at a chosen point.
"""

import sys
from datetime import date

import numpy as np
import pandas as pd

from cost_pipeline.storage import tables
from cost_pipeline.storage.connect import connect

DAY = date(2026, 11, 1)


def big_frame(rows: int, run_id: str) -> pd.DataFrame:
    index = np.arange(rows)
    return pd.DataFrame({"id": index, "text": np.array(["um hello", "uh world", run_id])[index % 3]})


def announce(label: str, step):
    def wrapped(*args, **kwargs):
        print(label, flush=True)
        return step(*args, **kwargs)

    return wrapped


def main(database: str, rows: int, run_id: str) -> None:
    frame = big_frame(rows, run_id)
    tables._delete_slice = announce("deleting", tables._delete_slice)
    tables._insert_frame = announce("inserting", tables._insert_frame)
    with connect(database) as connection:
        tables.replace_partitions(connection, [tables.TableWrite("big", frame, DAY, run_id)])
    print("committed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
