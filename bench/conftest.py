"""Benchmarks share the test session set-up: the numba cache (warmed once, compile time
never inside a measurement) and the leak guard for processes and shm names."""
from tests.conftest import no_leaks, warm_numba  # noqa: F401
