"""A real PostgreSQL server for tests: initdb in a temporary folder, started on a free
loopback port, stopped (by its pid) and removed after.

Uses Debian's server binaries (/usr/lib/postgresql/<version>/bin; the README's test
command installs the package). PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user the package creates.
"""
from __future__ import annotations

import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support import leaks
from tests.support.nodes import free_port


def binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def available() -> str | None:
    """None if a server can be started here, else why not."""
    if binaries() is None:
        return "PostgreSQL server binaries not installed (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


@contextmanager
def server() -> Iterator[str]:
    """Yields a postgresql:// URL of a fresh database on a server of our own."""
    bindir = binaries()
    assert bindir is not None
    # its own folder under /tmp: the server's user must reach it (pytest's are 0700)
    data = pathlib.Path(tempfile.mkdtemp(prefix="fc-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(prefix + [f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U",
                             "postgres", "--no-sync"], check=True, capture_output=True)
    proc = subprocess.Popen(prefix + [f"{bindir}/postgres", "-D", str(data), "-k",
                                      str(data), "-p", str(port), "-h", "127.0.0.1",
                                      "-c", "fsync=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    leaks.register(proc.pid)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the PostgreSQL test server did not start")
            time.sleep(0.1)
        subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U",
                        "postgres", "fastcluster"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/fastcluster"
    finally:
        proc.terminate()  # smart shutdown: the server's children go with it
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(data, ignore_errors=True)


def database(url: str, name: str) -> str:
    """Another database on the same server (one per node)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name
