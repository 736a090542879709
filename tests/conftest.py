"""Test session set-up: numba cache (warmed once), and the leak guard every test runs
under: a test that leaves a process or a /dev/shm name behind fails."""
from __future__ import annotations

import os
import pathlib

from fastcluster.core.config import kernel_cache_dir, numba_cache_base  # imports no numba

# Before anything imports numba: the nodes' own cache rule (core.config.numba_cache_base),
# keyed on the kernel sources, for the session and for the nodes it starts (their CLI
# applies the same key and finds it done).
REPO = pathlib.Path(__file__).resolve().parent.parent
os.environ["NUMBA_CACHE_DIR"] = kernel_cache_dir(numba_cache_base())

import pytest  # noqa: E402

from tests.support import leaks  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def warm_numba() -> None:
    """Compile or load every kernel once per session (seconds cold, ~0.3 s warm)."""
    from fastcluster.shm.warm import warm_kernels

    warm_kernels()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    before = leaks.snapshot()
    yield
    problems = leaks.check(before)
    if problems:
        pytest.fail("leaked: " + "; ".join(problems), pytrace=False)
