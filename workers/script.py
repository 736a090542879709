"""The script process: runs the operator's Python script (`[script] module`) outside the
cluster process, so a slow, raising or hanging hook never delays heartbeats.

It loads the module at boot: a script that fails to import is a boot failure, and the
master stops the node with the script's traceback instead of respawning it in a loop.
Neighbours: services.script (the API scripts call), workers.cluster (delivers events).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from types import ModuleType

from fastcluster.shm import control as CT
from fastcluster.workers.child import Child

log = logging.getLogger("script")

IDLE_S = 0.1


def load_script(path: str) -> ModuleType:
    """Import the user's script from its path (raises whatever the script raises)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"[script] module: {path} does not exist")
    name = "fastcluster_user_script"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"[script] module: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class ScriptProcess(Child):
    role = CT.ROLE_SCRIPT
    title = "script"

    def boot(self) -> None:
        for s in self.ctx.sip:
            if s.sock is not None:
                s.sock.close()
        for sock in (self.ctx.mi_sock, self.ctx.bin_sock):
            if sock is not None:
                sock.close()
        self.module = load_script(self.cfg["script.module"])
        log.info("script %s loaded", self.cfg["script.module"])

    def run(self) -> None:
        while not self.stopping:
            self.beat()
            self.check_reload()
            time.sleep(IDLE_S)
