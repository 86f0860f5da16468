"""A process that holds a lock while a test runs (a second run of a stage, as another machine or terminal would
start it): ``holder_processes(script)`` is the fixture body shared by the storage and cutouts tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def holder_processes(script: str):
    """Yield ``start(*argv)``: runs ``script`` with ``argv`` in a new Python (this checkout's lib first on its
    path), waits until it prints ``held``, and returns the process; every process started is stopped after."""
    started = []

    def start(*argv: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")]))
        process = subprocess.Popen([sys.executable, "-c", script, *argv], env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(30)
