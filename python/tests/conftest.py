"""Shared fixtures of the Python package's tests (run by ctest's test_python, docs/python.md)."""
import os
import pathlib
import shutil

import numpy as np
import pytest

import lowbit


@pytest.fixture(scope="session")
def data_dir():
    """The shipped data (LOWBIT_DATA_DIR, else the build's default); skips a test that needs it
    when it is absent, naming the directory."""
    d = pathlib.Path(os.environ.get("LOWBIT_DATA_DIR") or lowbit.default_data_dir)
    if not d.is_dir():
        pytest.skip(f"the data directory {d} is absent (scripts/get-data.sh fetches it)")
    return d


@pytest.fixture(scope="session")
def cli():
    """The lowbit command line of the same build (LOWBIT_CLI), for cross-checks."""
    path = os.environ.get("LOWBIT_CLI") or shutil.which("lowbit")
    if not path or not os.path.exists(path):
        pytest.skip("the lowbit CLI is not built (LOWBIT_CLI unset)")
    return path


def bits(a):
    """The float32 bit patterns of an array, for bit-for-bit comparisons (NaN payloads, -0)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
