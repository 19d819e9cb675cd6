"""Test setup for tests/drift.

* Make the repository root importable when pytest runs without the project's pytest config (a no-op
  when the project config already does).
* One OpenBLAS thread, as the worker should run (DRIFT.md section 1): the monitor's small matrix
  products are ~15x slower with OpenBLAS threads spinning against other busy threads on 2 cores,
  which made this suite take 150 s instead of ~25 s on the shared machine. It only takes effect if
  numpy has not been imported yet (pytest loads this file before the test modules).
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
