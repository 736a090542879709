"""The script process: runs the operator's Python script (`[script] module`) outside the
cluster process, so a slow, raising or hanging hook never delays heartbeats.

It loads the module at boot: a script that fails to import is a boot failure, and the
master stops the node with the script's traceback instead of respawning it in a loop.
Then it connects to the cluster process (and reconnects whenever that one restarts),
and its main thread beats, applies reloads and abandons hooks that run too long while
the runtime's threads read messages and call the hooks. Neighbours: services.script
(the API and runtime), services.script_bridge (the cluster side).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from types import ModuleType

from fastcluster.services import script as api
from fastcluster.services.script.runtime import Runtime
from fastcluster.shm import control as CT
from fastcluster.workers.child import Child

log = logging.getLogger("script")

IDLE_S = 0.05
RECONNECT_S = 0.2


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
        self.ctx.close_sockets()
        api.MI_COMMANDS.clear()
        self.module = load_script(self.cfg["script.module"])
        self.runtime = Runtime(self, self.module)
        api.set_runtime(self.runtime)
        hooks = [h for h in api.HOOKS if self.runtime.hooks[h] is not None]
        log.info("script %s loaded: hooks %s, MI commands %s", self.cfg["script.module"],
                 ", ".join(hooks) or "none", ", ".join(api.MI_COMMANDS) or "none")

    def run(self) -> None:
        rt = self.runtime
        next_try = 0.0
        try:
            while not self.stopping:
                self.beat()
                self.check_reload()
                now = time.monotonic()
                if not rt.connected.is_set() and now >= next_try:
                    rt.connect()
                    next_try = now + RECONNECT_S
                rt.watch()
                time.sleep(IDLE_S)
        finally:
            rt.close()
