"""Run sipp scenarios from bench/sipp against a node and read its final counts.

sipp (Debian package sip-tester) must be on PATH: scripts/test installs it. Results come
from sipp's statistics file (-trace_stat), not from parsing its screen.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import pathlib
import re
import shutil
import socket
import subprocess
import time

from tests.support import leaks
from tests.support.nodes import free_port

SCENARIOS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "sipp"


@dataclasses.dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    elapsed_s: float
    rate: float
    stdout: str
    stats_path: pathlib.Path
    pid: int = 0

    def errors_log(self, tail: int = 3000) -> str:
        """The end of sipp's -trace_err log of this run ("" without one): what went
        wrong in a failed call, for assertion messages."""
        path = self.stats_path.parent / f"{self.stats_path.name.rsplit('-', 1)[0]}_" \
            f"{self.pid}_errors.log"
        if not self.pid or not path.exists():
            return ""
        return path.read_text(errors="replace")[-tail:]

    def unexpected(self) -> collections.Counter[str]:
        """Messages the calls went on past (sipp -trace_err with -default_behaviors
        all,-abortunexp), by their first line's method or status code: "180", "BYE"."""
        text = self.errors_log(tail=1 << 30)
        return collections.Counter(
            m.group(1) or m.group(2) for m in re.finditer(
                r"Continuing call on unexpected message[^\n]*?, received '"
                r"(?:SIP/2\.0 (\d{3})|([A-Z]+) )", text))


def available() -> bool:
    return shutil.which("sipp") is not None


# SO_RCVBUF sipp asks for its socket (-buff_size; the kernel caps it at rmem_max). With
# sipp's default (the system's 208 KiB) a burst of ~170 answers to 200 outstanding calls
# overflows it; each lost answer stalls its call for the 500 ms retransmission timer,
# and those stalls, not the server, then set a closed loop's rate.
CLIENT_RCVBUF = 4 << 20


def run(scenario: str, target: tuple[str, int], workdir: pathlib.Path, calls: int,
        rate: int = 1000, limit: int = 200, keys: dict[str, object] | None = None,
        timeout_s: int = 120, extra: list[str] | None = None,
        call_ids: str | None = None, local_port: int | None = None,
        closed_loop: int = 0) -> SippResult:
    """call_ids: a -cid_str pattern (%u = call number); the default gives the stable
    per-user Call-ID the register scenarios need: reg-<user key><call number>.
    local_port: keep it across runs that must refresh the same Contact URIs.
    closed_loop: N keeps N calls outstanding, each ended call starting the next at once
    (sipp -users N) instead of opening calls at `rate` up to `limit` outstanding. sipp's
    rate generator wakes once per millisecond and forfeits the calls the limit held
    back, so `-r R -l N` runs well below both; -users N is the closed loop that is not
    the client's pace (one sipp: ~110k REGISTER/s against a trivial C responder here)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stats = workdir / f"{scenario}-{time.monotonic_ns()}.csv"
    lport = local_port or free_port(socket.SOCK_DGRAM)
    pace = ["-users", str(closed_loop)] if closed_loop else \
        ["-r", str(rate), "-l", str(limit)]
    cmd = ["sipp", f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / f"{scenario}.xml"),
           "-m", str(calls), *pace, "-i", "127.0.0.1",
           "-p", str(lport), "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "3600",
           "-timeout", f"{timeout_s}s", "-timeout_error", "-recv_timeout", "5000",
           "-cid_str", call_ids or f"reg-{(keys or {}).get('user', 'u')}%u@fastcluster"]
    for name, value in (keys or {}).items():
        cmd += ["-key", name, str(value)]
    if "-buff_size" not in (extra or []):
        cmd += ["-buff_size", str(CLIENT_RCVBUF)]
    cmd += extra or []
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=workdir, text=True)
    leaks.register(proc.pid)
    out, _ = proc.communicate(timeout=timeout_s + 30)
    elapsed = time.monotonic() - started
    ok, failed, rate_seen = _counts(stats)
    return SippResult(proc.returncode, ok, failed, elapsed, rate_seen, out[-3000:], stats,
                      proc.pid)


def users_file(path: pathlib.Path, prefix: str, count: int, password: str,
               first: int = 0) -> pathlib.Path:
    """An injection file (-inf) for the authenticated scenarios: one line per call,
    field0 the user (prefix + number), field1 sipp's [authentication] keyword for it."""
    lines = ["SEQUENTIAL"]
    lines += [f"{prefix}{i};[authentication username={prefix}{i} password={password}]"
              for i in range(first, first + count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _counts(stats: pathlib.Path) -> tuple[int, int, float]:
    if not stats.exists():
        return 0, 0, 0.0
    with open(stats, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    if len(rows) < 2:
        return 0, 0, 0.0
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}
    ok = int(last[col["SuccessfulCall(C)"]])
    failed = int(last[col["FailedCall(C)"]])
    # ElapsedTime has whole seconds only; the time stamps end with an epoch float.
    seconds = float(last[col["CurrentTime"]].split()[-1]) - \
        float(last[col["StartTime"]].split()[-1])
    return ok, failed, (ok / seconds if seconds > 0 else 0.0)


class Uas:
    """A sipp UAS running in the background (bench/sipp/uas*.xml) until it served
    `calls` calls; `finish` waits for it and reads its statistics."""

    def __init__(self, scenario: str, port: int, workdir: pathlib.Path, calls: int,
                 timeout_s: int = 60, extra: list[str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stats = workdir / f"{scenario}-{port}-{time.monotonic_ns()}.csv"
        cmd = ["sipp", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1",
               "-p", str(port), "-m", str(calls), "-nostdin", "-trace_stat", "-stf",
               str(self.stats), "-fd", "3600", "-timeout", f"{timeout_s}s",
               "-trace_err"] + (extra or [])
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=workdir, text=True)
        leaks.register(self.proc.pid)
        self.workdir = workdir
        time.sleep(0.2)  # bound before the first INVITE comes

    def finish(self, timeout: float = 30) -> SippResult:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        ok, failed, rate = _counts(self.stats)
        return SippResult(self.proc.returncode, ok, failed, time.monotonic() - self.started,
                          rate, out[-3000:], self.stats)

    def errors(self) -> str:
        return "".join(p.read_text(errors="replace")[-3000:]
                       for p in self.workdir.glob("*errors.log"))
