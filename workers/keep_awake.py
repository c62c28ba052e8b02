"""Keep a Mac from idle-sleeping while a worker trains: ``caffeinate -i -w <pid>``.

``-i`` prevents idle sleep only (the display may sleep, closing the lid still sleeps); ``-w``
makes caffeinate exit by itself when the worker's process ends, even if the worker is killed
with SIGKILL, so no assertion outlives the run. Elsewhere this does nothing. The platform name
and the process runner are parameters so a test on Linux can stand in for macOS.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

Runner = Callable[..., Any]  # subprocess.Popen or a stand-in: runner(cmd, **kwargs) -> proc


class KeepAwake:
    """A running caffeinate, or nothing (not a Mac, or caffeinate missing)."""

    def __init__(self, proc: Any | None = None):
        self.proc = proc

    @property
    def active(self) -> bool:
        return self.proc is not None

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(OSError):
            proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def keep_awake(pid: int | None = None, platform: str = sys.platform,
               runner: Runner = subprocess.Popen) -> KeepAwake:
    """Start ``caffeinate -i -w pid`` on macOS (pid: this process by default)."""
    if platform != "darwin":
        return KeepAwake()
    cmd = ["caffeinate", "-i", "-w", str(pid or os.getpid())]
    try:
        proc = runner(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    except OSError:  # no caffeinate on this system: train anyway
        return KeepAwake()
    return KeepAwake(proc)
