"""``python -m workers.launch --config <run_dir>/config.json``: a job of several processes.

The server starts this wrapper instead of ``python -m workers.<backend>`` when the job runs
as several processes (contract.launch_plan.is_distributed). It reads the plan the server
wrote to ``<run_dir>/launch.json``, empties ``ranks/`` (a resume starts clean), for MLX checks
that every other Mac answers over ssh and copies it what its ranks read from the run folder
(the config, a resume's checkpoint), and then runs the real launcher as its child:
``accelerate launch`` (torch) or ``mlx.launch`` (MLX). The child stays in this process group
and writes to this process's stdout and stderr (the run's worker.log). The wrapper exits with
the child's exit code (128 + N when a signal N ended it).

Cancel (SIGTERM or SIGINT to this process, never to its group: the supervisor signals the
wrapper alone, as mlx.launch and its ssh clients would die at once of a group signal):
- accelerate: the signal goes on to the launcher, whose torchrun agent sends SIGTERM to every
  rank and waits for them (the ranks agree on the step to stop at, then save), for up to
  TORCH_ELASTIC_SHUTDOWN_TIMEOUT s, set here to the supervisor's grace + 10 s (torchrun's
  own default, 30 s, could cut a checkpoint save short);
- mlx: the signal goes to each rank process of this machine listed in ranks/ (the Macs
  further away learn of the stop through the per-step all_sum of the stop flag).
Only the first cancel signal is forwarded: a second SIGTERM to torchrun's agent would start
its shutdown again and a third would end it before its cleanup, leaving ranks behind.

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
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from contract.events import EVENTS_FILE, EventWriter
from contract.launch_plan import (
    LaunchPlan,
    accelerate_command,
    mlx_command,
    read_launch_plan,
)
from contract.ranks import RankInfo, clear_ranks, read_ranks
from workers.world import alive

REPO = Path(__file__).resolve().parents[1]
LOCAL_SSH = "127.0.0.1"  # the one host mlx.launch starts without ssh
SSH_TIMEOUT_S = 10
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}"]
COPY_TIMEOUT_S = 600  # a checkpoint of a few hundred MB over a slow link still fits
# torchrun SIGKILLs its ranks this long after a SIGTERM; the supervisor's SIGKILL after its
# grace (PROSPECT_CANCEL_GRACE_S, which the server sets) must stay the only hard limit.
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
GRACE_ENV = "PROSPECT_CANCEL_GRACE_S"
DEFAULT_GRACE_S = 60
SHUTDOWN_MARGIN_S = 10
POLL_S = 0.2  # how often, once a cancel came, newly started MLX ranks are looked for
# The module each launcher lives in: found (not imported) before the launch.
LAUNCHER_MODULE = {"accelerate": "accelerate", "mlx": "mlx"}
LAUNCHER_FIX = {"accelerate": "install the torch extra (pip install 'prospect[torch]'), "
                              "which brings accelerate",
                "mlx": "install the mlx extra (pip install 'prospect[mlx]'), which brings "
                       "mlx.launch"}


class CancelledBeforeLaunch(BaseException):
    """A cancel while the hosts are checked or the files copied: the ssh or scp under way is
    killed (subprocess.run does it on any exception) and no rank has started."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _cancel_before_launch(signum: int, _frame: Any) -> None:
    raise CancelledBeforeLaunch(signum)


class LaunchFailed(Exception):
    """The launch cannot go on: the fields of the run's ``error`` event."""

    def __init__(self, error_type: str, message: str, hint: str):
        super().__init__(message)
        self.fields = {"error_type": error_type, "message": message, "hint": hint}


def ssh_command(host: str) -> list[str]:
    return ["ssh", *SSH_OPTIONS, host, "true"]


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


def copy_commands(host: str, config_path: Path, checkpoint: Path | None) -> list[list[str]]:
    """What a remote Mac's ranks read from this Mac's run folder, put at the same paths there
    (``workers.mlx --config`` names this Mac's path): the folders made, the config copied,
    and on a resume the checkpoint folder. ssh hands its command to the remote shell, hence
    the quoting; scp (SFTP) takes the remote path as it is."""
    folders = [str(config_path.parent)]
    if checkpoint is not None and str(checkpoint.parent) not in folders:
        folders.append(str(checkpoint.parent))
    commands = [["ssh", *SSH_OPTIONS, "--", host, "mkdir", "-p", "--",
                 *(shlex.quote(f) for f in folders)],
                ["scp", "-q", *SSH_OPTIONS, "--", str(config_path),
                 f"{host}:{config_path.parent}/"]]
    if checkpoint is not None:
        commands.append(["scp", "-q", "-r", *SSH_OPTIONS, "--", str(checkpoint),
                         f"{host}:{checkpoint.parent}/"])
    return commands


def resume_checkpoint(raw: Any) -> Path | None:
    """The config's resume_from_checkpoint when it is a folder here (else None: rank 0 says
    what is wrong with it)."""
    given = raw.get("resume_from_checkpoint") if isinstance(raw, dict) else None
    if isinstance(given, str) and Path(given).is_absolute() and Path(given).is_dir():
        return Path(given)
    return None


def copy_run_files(plan: LaunchPlan, config_path: Path, run_dir: Path, raw: Any) -> None:
    """Each Mac other than this one gets the run's config (and a resume's checkpoint) at the
    same path before mlx.launch starts its ranks there; LaunchFailed names the command."""
    remote = [n for n in (str(h.get("ssh", "")) for h in plan.hosts) if n != LOCAL_SSH]
    if not remote:
        return
    checkpoint = resume_checkpoint(raw)
    for name in remote:
        message = f"copying the run's config to {name}"
        print(message, flush=True)
        emit(run_dir, "status", phase="copying_run_files", message=message)
        for cmd in copy_commands(name, config_path, checkpoint):
            run_remote(name, cmd)


def run_remote(name: str, cmd: list[str]) -> None:
    shown = " ".join(cmd)
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=COPY_TIMEOUT_S)
    except FileNotFoundError:
        raise LaunchFailed("host_unreachable", f"cannot copy the run's files to host {name}: "
                           f"there is no {cmd[0]} on this machine to run `{shown}`",
                           "Install OpenSSH's client; the other Macs get the run's files "
                           "through ssh and scp.") from None
    except subprocess.TimeoutExpired:
        raise LaunchFailed("run_files_not_copied", f"cannot copy the run's files to host "
                           f"{name}: `{shown}` did not end in {COPY_TIMEOUT_S} s",
                           _COPY_HINT) from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout or "").strip()[-1000:] or f"({cmd[0]} said nothing)"
        # ssh's own failure to connect is 255; any other code is the remote side refusing.
        unreachable = cmd[0] == "ssh" and done.returncode == 255
        raise LaunchFailed("host_unreachable" if unreachable else "run_files_not_copied",
                           f"cannot copy the run's files to host {name}: `{shown}` exited with "
                           f"code {done.returncode}: {said}",
                           _SSH_HINT if unreachable else _COPY_HINT)


_COPY_HINT = ("The other Macs read the run's config (and a resume's checkpoint) at the same "
              "path as this Mac: check that this path can be written there by the ssh user "
              "(the same home folder or PROSPECT_HOME on every Mac) and that the disk has "
              "room; then resume the job.")

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
    emit(run_dir, "error", **failure.fields)
    emit(run_dir, "done", status="failed", summary={})
    return 1


def emit(run_dir: Path, etype: str, **fields: Any) -> None:
    """One event, its seq going on from the file's last (no rank writes yet)."""
    events = EventWriter(run_dir / EVENTS_FILE)
    try:
        events.emit(etype, **fields)
    finally:
        events.close()


def launcher_env(plan: LaunchPlan, environ: dict[str, str]) -> dict[str, str]:
    """The launcher's environment: for accelerate, torchrun waits for its ranks after a
    cancel as long as the supervisor does, plus a margin (a value already set is kept)."""
    env = dict(environ)
    if plan.launcher == "accelerate" and SHUTDOWN_TIMEOUT_ENV not in env:
        env[SHUTDOWN_TIMEOUT_ENV] = str(shutdown_timeout_s(env.get(GRACE_ENV)))
    return env


def shutdown_timeout_s(grace: str | None) -> int:
    """The supervisor's grace (seconds, as the server passes it) + the margin; torchrun
    reads an int."""
    try:
        seconds = float(grace) if grace is not None else DEFAULT_GRACE_S
    except ValueError:
        seconds = DEFAULT_GRACE_S
    if not math.isfinite(seconds) or seconds < 0:
        seconds = DEFAULT_GRACE_S
    return math.ceil(seconds) + SHUTDOWN_MARGIN_S


def local_ranks(run_dir: Path) -> list[RankInfo]:
    """The ranks of ranks/ that run on this machine and are still the process they were."""
    here = socket.gethostname()
    return [r for r in read_ranks(run_dir) if r.host == here and alive(r)]


class Forwarder:
    """Passes a cancel on to the launched processes, as the launcher needs it."""

    def __init__(self, plan: LaunchPlan, run_dir: Path, child: subprocess.Popen):
        self.plan, self.run_dir, self.child = plan, run_dir, child
        self.cancelled = False
        self._logged_repeat = False
        self._told: set[tuple[int, float]] = set()  # MLX ranks sent SIGTERM: (pid, start)

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.cancelled:  # forwarded once: see the module's docstring
            if not self._logged_repeat:
                self._logged_repeat = True
                with contextlib.suppress(RuntimeError):  # a print it interrupted
                    print(f"signal {signum} ignored: the cancel is already under way",
                          flush=True)
            return
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
    signal.signal(signal.SIGTERM, _cancel_before_launch)
    signal.signal(signal.SIGINT, _cancel_before_launch)
    try:
        if plan.launcher == "mlx":
            check_hosts(plan)
        cmd = launcher_command(plan, config_path, run_dir)
        if plan.launcher == "mlx":  # once the launch can start: not copied for nothing
            copy_run_files(plan, config_path, run_dir, raw)
    except LaunchFailed as failure:
        return report(run_dir, failure)
    except CancelledBeforeLaunch as stop:
        # No done event: the server ends a job it asked to stop as cancelled.
        print(f"cancelled before the launch (signal {stop.signum})", flush=True)
        return 128 + stop.signum
    # The handler is set before the child exists: a cancel that comes while it starts is
    # not lost (it is forwarded once the child is there).
    pending: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: pending.append(s))
    signal.signal(signal.SIGINT, lambda s, f: pending.append(s))
    print(f"launching {plan.processes} processes: {' '.join(cmd)}", flush=True)
    try:
        child = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL,
                                 env=launcher_env(plan, dict(os.environ)))
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
