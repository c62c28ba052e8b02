"""``python -m workers.launch --config <run_dir>/config.json``: a job of several processes.

The server starts this wrapper instead of ``python -m workers.<backend>`` when the job runs
as several processes (contract.launch_plan.is_distributed). It reads the plan the server
wrote to ``<run_dir>/launch.json``, empties ``ranks/`` (a resume starts clean), for MLX checks
that every other Mac answers over ssh, and then runs the real launcher as its child:
``accelerate launch`` (torch) or ``mlx.launch`` (MLX). The child stays in this process group
and writes to this process's stdout and stderr (the run's worker.log). The wrapper exits with
the child's exit code (128 + N when a signal N ended it).

Cancel (SIGTERM or SIGINT to this process, never to its group: the supervisor signals the
wrapper alone, as mlx.launch and its ssh clients would die at once of a group signal):
- accelerate: the signal goes on to the launcher, whose torchrun agent sends SIGTERM to every
  rank and waits for them (the ranks agree on the step to stop at, then save);
- mlx: the signal goes to each rank process of this machine listed in ranks/ (the Macs
  further away learn of the stop through the per-step all_sum of the stop flag).

Events: the wrapper writes only what no rank can (a host that does not answer, a launcher
that cannot start), each time an ``error`` and a ``done`` failed, through EventWriter so the
seq goes on from the file's last one. Rank 0 writes all the others.

Plain Python: no torch, no mlx (the launchers import those in their own processes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from contract.events import EVENTS_FILE, EventWriter
from contract.launch_plan import (
    LaunchPlan,
    accelerate_command,
    mlx_command,
    read_launch_plan,
)
from contract.ranks import RankInfo, clear_ranks, read_ranks

REPO = Path(__file__).resolve().parents[1]
LOCAL_SSH = "127.0.0.1"  # the one host mlx.launch starts without ssh
SSH_TIMEOUT_S = 10
POLL_S = 0.2  # how often, once a cancel came, newly started MLX ranks are looked for
# The module each launcher lives in: found (not imported) before the launch.
LAUNCHER_MODULE = {"accelerate": "accelerate", "mlx": "mlx"}
LAUNCHER_FIX = {"accelerate": "install the torch extra (pip install 'prospect[torch]'), "
                              "which brings accelerate",
                "mlx": "install the mlx extra (pip install 'prospect[mlx]'), which brings "
                       "mlx.launch"}


class LaunchFailed(Exception):
    """The launch cannot go on: the fields of the run's ``error`` event."""

    def __init__(self, error_type: str, message: str, hint: str):
        super().__init__(message)
        self.fields = {"error_type": error_type, "message": message, "hint": hint}


def ssh_command(host: str) -> list[str]:
    return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}", host, "true"]


def check_hosts(plan: LaunchPlan) -> None:
    """Every Mac other than this one must take a passwordless ssh login now: mlx.launch
    would otherwise hang on a password prompt or die with ssh's words lost in the log."""
    for host in plan.hosts:
        name = str(host.get("ssh", ""))
        if name == LOCAL_SSH:
            continue
        cmd = ssh_command(name)
        shown = " ".join(cmd)
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=SSH_TIMEOUT_S + 20)
        except FileNotFoundError:
            raise LaunchFailed("host_unreachable", f"cannot reach host {name}: there is no ssh "
                               f"client on this machine to run `{shown}`",
                               "Install OpenSSH's client; mlx.launch starts the other Macs' "
                               "processes through ssh.") from None
        except subprocess.TimeoutExpired:
            raise LaunchFailed("host_unreachable", f"cannot reach host {name}: `{shown}` did "
                               f"not answer in {SSH_TIMEOUT_S + 20} s", _SSH_HINT) from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout or "").strip()[-1000:] or "(ssh said nothing)"
            raise LaunchFailed("host_unreachable", f"cannot reach host {name}: `{shown}` "
                               f"exited with code {done.returncode}: {said}", _SSH_HINT)


_SSH_HINT = ("Set up passwordless ssh from this Mac to that host (ssh-copy-id, then try the "
             "command above in a terminal), or check its ssh name in the Hosts setting on the "
             "System page; then resume the job.")


def launcher_command(plan: LaunchPlan, config_path: Path, run_dir: Path) -> list[str]:
    """The real launcher's command line; LaunchFailed when it is not installed or the plan is
    one it cannot start."""
    module = LAUNCHER_MODULE.get(plan.launcher)
    if module is None:
        raise LaunchFailed("launch_plan", f"launch.json names launcher {plan.launcher!r}; "
                           "Prospect starts accelerate (torch) or mlx (MLX)",
                           "Resume the job: the server writes the plan again at each start.")
    if importlib.util.find_spec(module) is None:
        raise LaunchFailed("launcher_missing", f"cannot start {plan.launcher}: the "
                           f"{module} package is not installed for {sys.executable}",
                           f"{LAUNCHER_FIX[plan.launcher].capitalize()}, then resume the job.")
    build = accelerate_command if plan.launcher == "accelerate" else mlx_command
    try:
        return build(plan, sys.executable, config_path, run_dir)
    except ValueError as exc:
        raise LaunchFailed("launch_plan", f"cannot launch this job: {exc}",
                           "Fix the setting named above and resume the job.") from None


def report(run_dir: Path, failure: LaunchFailed) -> int:
    print(f"launch failed: {failure.fields['message']}", file=sys.stderr, flush=True)
    events = EventWriter(run_dir / EVENTS_FILE)
    try:
        events.emit("error", **failure.fields)
        events.emit("done", status="failed", summary={})
    finally:
        events.close()
    return 1


def local_ranks(run_dir: Path) -> list[RankInfo]:
    """The ranks of ranks/ that run on this machine and are still the process they were."""
    here = socket.gethostname()
    return [r for r in read_ranks(run_dir) if r.host == here and _same_process(r)]


def _same_process(info: RankInfo) -> bool:
    try:
        proc = psutil.Process(info.pid)
        return abs(proc.create_time() - info.started_at) < 1 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Forwarder:
    """Passes a cancel on to the launched processes, as the launcher needs it."""

    def __init__(self, plan: LaunchPlan, run_dir: Path, child: subprocess.Popen):
        self.plan, self.run_dir, self.child = plan, run_dir, child
        self.cancelled = False
        self._told: set[tuple[int, float]] = set()  # MLX ranks sent SIGTERM: (pid, start)

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.cancelled = True
        if self.plan.launcher == "accelerate":
            # torchrun's agent turns it into SIGTERM to every rank and waits for them.
            _send(self.child.pid, signal.SIGTERM)
        else:
            self.tell_mlx_ranks()

    def tell_mlx_ranks(self) -> None:
        """SIGTERM to each local rank not yet told (one that starts after the cancel is told
        at the next poll)."""
        for info in local_ranks(self.run_dir):
            key = (info.pid, info.started_at)
            if key not in self._told:
                self._told.add(key)
                _send(info.pid, signal.SIGTERM)

    def wait(self) -> int:
        while True:
            try:
                return self.child.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                if self.cancelled and self.plan.launcher == "mlx":
                    self.tell_mlx_ranks()


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def run(config_path: Path) -> int:
    config_path = config_path.resolve()
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        run_dir = Path(raw["run_dir"]) if isinstance(raw.get("run_dir"), str) and \
            Path(raw["run_dir"]).is_absolute() else config_path.parent
    except (OSError, ValueError, AttributeError) as exc:
        print(f"cannot read {config_path}: {exc}", file=sys.stderr, flush=True)
        run_dir = config_path.parent
        return report(run_dir, LaunchFailed(
            "config", f"cannot read the job's config {config_path}: {exc}",
            "Resume the job: the server writes its config again at each start."))
    plan = read_launch_plan(run_dir)
    if plan is None:
        return report(run_dir, LaunchFailed(
            "launch_plan", f"no readable launch plan in {run_dir} (launch.json)",
            "Resume the job: the server writes the plan again at each start."))
    clear_ranks(run_dir)
    try:
        if plan.launcher == "mlx":
            check_hosts(plan)
        cmd = launcher_command(plan, config_path, run_dir)
    except LaunchFailed as failure:
        return report(run_dir, failure)
    print(f"launching {plan.processes} processes: {' '.join(cmd)}", flush=True)
    # The handler is set before the child exists: a cancel that comes while it starts is
    # not lost (it is forwarded once the child is there).
    pending: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: pending.append(s))
    signal.signal(signal.SIGINT, lambda s, f: pending.append(s))
    try:
        child = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return report(run_dir, LaunchFailed(
            "launcher_missing", f"cannot start {plan.launcher}: {exc}",
            f"{LAUNCHER_FIX.get(plan.launcher, 'check the installation').capitalize()}, then "
            "resume the job."))
    forwarder = Forwarder(plan, run_dir, child)
    signal.signal(signal.SIGTERM, forwarder.on_signal)
    signal.signal(signal.SIGINT, forwarder.on_signal)
    if pending:
        forwarder.on_signal(pending[0], None)
    code = forwarder.wait()
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the run's config.json")
    return run(parser.parse_args(argv).config)


if __name__ == "__main__":
    sys.exit(main())
