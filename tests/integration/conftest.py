"""Fixtures for the integration tests."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest


class LinkCutter:
    """iptables rules dropping TCP between loopback addresses; heal() removes them."""

    def __init__(self) -> None:
        self.rules: list[list[str]] = []

    def __call__(self, a: str, b: str) -> None:
        for src, dst in ((a, b), (b, a)):
            rule = ["INPUT", "-s", src, "-d", dst, "-p", "tcp", "-j", "DROP"]
            subprocess.run(["iptables", "-I", *rule], check=True)
            self.rules.append(rule)

    def heal(self) -> None:
        for rule in self.rules:
            subprocess.run(["iptables", "-D", *rule], check=False)
        self.rules.clear()


@pytest.fixture
def cut_link():
    """Cut links between loopback addresses for a test (rules removed after it)."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("needs root and iptables to cut a loopback link")
    cutter = LinkCutter()
    yield cutter
    cutter.heal()
