"""Shared fixtures of the Python package's tests (run by ctest's test_python, docs/python.md)."""
import os
import pathlib
import shutil

import numpy as np
import pytest

import lowbit


@pytest.fixture(scope="session")
def data_dir():
    """The shipped data (lowbit.data_dir()). A test that needs it fails when it is absent, naming
    the directory; it never skips (README "Install")."""
    d = pathlib.Path(lowbit.data_dir())
    if not d.is_dir():
        pytest.fail(f"the data directory {d} is absent: set LOWBIT_DATA, or run scripts/get-data.sh")
    return d


@pytest.fixture(scope="session")
def cli():
    """The lowbit command line of the same build (LOWBIT_CLI, set by ctest), for cross-checks."""
    path = os.environ.get("LOWBIT_CLI") or shutil.which("lowbit")
    if not path or not os.path.exists(path):
        pytest.fail("the lowbit CLI is not found: set LOWBIT_CLI to build/lowbit")
    return path


def bits(a):
    """The float32 bit patterns of an array, for bit-for-bit comparisons (NaN payloads, -0)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
