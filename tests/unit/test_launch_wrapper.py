"""workers/launch.py before its launcher runs: a Mac that does not answer over ssh, a plan
that is missing, a launcher that cannot start. Each is an ``error`` event that names the
problem and the fix, then ``done`` failed, the seq going on from the file's last event; the
run's ranks/ is emptied first. Real ssh, real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from contract.events import EVENTS_FILE, EventWriter, read_events
from contract.job_config import write_config
from contract.launch_plan import LaunchPlan, write_launch_plan
from contract.ranks import write_rank_start
from tests.helpers import ROOT
from workers import launch

UNREACHABLE = "prospect-no-such-host.invalid"  # .invalid never resolves (RFC 2606)


def run_wrapper(run_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.launch", "--config",
                           str(run_dir / "config.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def prepared(tmp_path: Path, backend: str = "mlx") -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(run_dir, job_id=1, backend=backend, method="kto", model="m", dataset="d",
                 params={}, resume_from_checkpoint=None)
    events = EventWriter(run_dir / EVENTS_FILE)  # an earlier attempt's events
    for _ in range(3):
        events.emit("log", level="info", message="earlier")
    events.close()
    write_rank_start(run_dir, 0, 2, 0, 0.0)  # left from that attempt
    return run_dir


def new_events(run_dir: Path) -> list:
    events, _ = read_events(run_dir / EVENTS_FILE)
    return [e for e in events if e.seq > 3]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_a_host_that_does_not_answer_stops_the_launch(tmp_path):
    run_dir = prepared(tmp_path)
    write_launch_plan(run_dir, LaunchPlan(
        launcher="mlx", processes=2, starting_port=45000,
        hosts=[{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
               {"ssh": UNREACHABLE, "ips": ["10.255.0.2"]}]))
    done = run_wrapper(run_dir)
    assert done.returncode == 1, done.stderr
    error, end = new_events(run_dir)
    assert (error.seq, error.type, end.seq, end.type) == (4, "error", 5, "done")
    assert error.data["error_type"] == "host_unreachable"
    msg = error.data["message"]
    assert msg.startswith(f"cannot reach host {UNREACHABLE}: `ssh -o BatchMode=yes -o "
                          f"ConnectTimeout=10 {UNREACHABLE} true` exited with code 255: ")
    assert "resolve" in msg.lower(), msg  # ssh's own words
    assert "passwordless ssh" in error.data["hint"] and "Hosts setting" in error.data["hint"]
    assert end.data["status"] == "failed"
    assert not (run_dir / "ranks").exists()  # emptied before the check
    assert not (run_dir / "hostfile.json").exists()  # mlx.launch never ran


def test_no_plan_is_an_error_naming_the_file(tmp_path):
    run_dir = prepared(tmp_path, backend="torch")
    done = run_wrapper(run_dir)
    assert done.returncode == 1
    error, end = new_events(run_dir)
    assert error.data["error_type"] == "launch_plan"
    assert "launch.json" in error.data["message"] and end.data["status"] == "failed"


def test_a_plan_the_launcher_cannot_start(tmp_path):
    run_dir = prepared(tmp_path, backend="torch")
    # Two processes on three GPUs: accelerate_command refuses it before anything starts.
    write_launch_plan(run_dir, LaunchPlan(launcher="accelerate", processes=2,
                                          gpu_ids=[0, 1, 2]))
    done = run_wrapper(run_dir)
    assert done.returncode == 1
    error, end = new_events(run_dir)
    assert error.data["error_type"] == "launch_plan"
    assert "names 3 GPUs for 2 processes" in error.data["message"]
    assert end.data == {"status": "failed", "summary": {}}


def test_the_launcher_runs_the_worker_on_every_process_and_its_code_is_returned(tmp_path):
    """accelerate launch starts workers.torch with this run's config on two CPU processes;
    the config lacks job_id, so each process fails at once: rank 0 alone writes the error
    and the done (after the earlier events), and the launcher's code 1 is the wrapper's."""
    run_dir = prepared(tmp_path, backend="torch")
    write_launch_plan(run_dir, LaunchPlan(launcher="accelerate", processes=2))
    (run_dir / "config.json").write_text(json.dumps({"run_dir": str(run_dir)}))
    done = run_wrapper(run_dir, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "launching 2 processes" in done.stdout
    assert "Root Cause (first observed failure)" in done.stderr  # torchrun's summary
    events = new_events(run_dir)
    assert [e.type for e in events if e.type != "memory"] == ["error", "done"], events
    assert events[0].seq == 4 and events[0].data["error_type"] == "invalid_config"


# --- the run's files for the other Macs, a cancel forwarded once, torchrun's shutdown wait ---

FAKE = """#!{python}
import json, os, sys
# A stand-in ssh/scp: records its argv; the program named in FAKE_FAIL exits FAKE_CODE.
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if os.path.basename(sys.argv[0]) == os.environ.get("FAKE_FAIL"):
    sys.stderr.write("fake: Permission denied\\n")
    sys.exit(int(os.environ.get("FAKE_CODE", "1")))
"""


def fake_ssh(tmp_path: Path, fail: str = "", code: int = 1) -> dict[str, str]:
    """A PATH whose ssh and scp record their argv in tmp_path/calls.jsonl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ssh", "scp"):
        script = bin_dir / name
        script.write_text(FAKE.format(python=sys.executable))
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_FAIL": fail,
            "FAKE_CODE": str(code), "FAKE_LOG": str(tmp_path / "calls.jsonl")}


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


TWO_MACS = [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "mac2", "ips": ["10.0.0.2"]}]
OPTS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]


def test_the_commands_that_copy_a_runs_files_to_another_mac():
    config = Path("/home/a/runs/run 7/config.json")
    assert launch.copy_commands("mac2", config, None) == [
        ["ssh", *OPTS, "--", "mac2", "mkdir", "-p", "--", "'/home/a/runs/run 7'"],
        ["scp", "-q", *OPTS, "--", str(config), "mac2:/home/a/runs/run 7/"]]
    checkpoint = Path("/home/a/runs/run 7/checkpoints/checkpoint-4")
    assert launch.copy_commands("mac2", config, checkpoint)[::2] == [
        ["ssh", *OPTS, "--", "mac2", "mkdir", "-p", "--", "'/home/a/runs/run 7'",
         "'/home/a/runs/run 7/checkpoints'"],
        ["scp", "-q", "-r", *OPTS, "--", str(checkpoint), "mac2:/home/a/runs/run 7/checkpoints/"]]


def test_the_config_and_the_resume_checkpoint_go_to_every_other_mac(tmp_path, monkeypatch):
    run_dir = prepared(tmp_path)
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    raw = {"resume_from_checkpoint": str(checkpoint)}
    for key, value in fake_ssh(tmp_path).items():
        monkeypatch.setenv(key, value)
    plan = LaunchPlan(launcher="mlx", processes=3, hosts=[*TWO_MACS, {"ssh": "mac3", "ips": []}])
    launch.copy_run_files(plan, run_dir / "config.json", run_dir, raw)
    made = calls(tmp_path)
    assert made == [c for host in ("mac2", "mac3")
                    for c in launch.copy_commands(host, run_dir / "config.json", checkpoint)]
    assert [(e.seq, e.type, e.data["message"]) for e in new_events(run_dir)] == [
        (4, "status", "copying the run's config to mac2"),
        (5, "status", "copying the run's config to mac3")]


@pytest.mark.parametrize(("fail", "code", "error_type"), [
    ("scp", 1, "run_files_not_copied"), ("ssh", 255, "host_unreachable")])
def test_a_copy_that_fails_stops_the_launch(tmp_path, fail, code, error_type):
    """The reachability check passes (the fake ssh answers `true`), then the copy fails:
    an error naming the host, the command and its stderr, then done failed, exit 1."""
    run_dir = prepared(tmp_path)
    write_launch_plan(run_dir, LaunchPlan(launcher="mlx", processes=2, hosts=TWO_MACS))
    env = {**os.environ, **fake_ssh(tmp_path, fail if fail == "scp" else "", code)}
    if fail == "ssh":  # ssh fails only from its second call (the mkdir) on
        env["FAKE_LOG"] = str(tmp_path / "calls.jsonl")
        (tmp_path / "bin" / "ssh").write_text(FAKE.format(python=sys.executable).replace(
            "if os.path.basename", "if 'mkdir' in sys.argv and os.path.basename"))
        env["FAKE_FAIL"] = "ssh"
    done = subprocess.run([sys.executable, "-m", "workers.launch", "--config",
                           str(run_dir / "config.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    status, error, end = new_events(run_dir)
    assert status.data == {"phase": "copying_run_files",
                           "message": "copying the run's config to mac2"}
    failed = launch.copy_commands("mac2", run_dir / "config.json", None)[
        0 if fail == "ssh" else 1]
    assert error.data["error_type"] == error_type
    assert error.data["message"] == (f"cannot copy the run's files to host mac2: "
                                     f"`{' '.join(failed)}` exited with code {code}: "
                                     "fake: Permission denied")
    assert end.data == {"status": "failed", "summary": {}}
    assert [c[0] for c in calls(tmp_path)][-1] == fail  # nothing ran after the failure


def test_torchrun_waits_for_its_ranks_as_long_as_the_supervisor_does():
    accelerate = LaunchPlan(launcher="accelerate", processes=2)
    env = launch.launcher_env(accelerate, {"PROSPECT_CANCEL_GRACE_S": "45.5"})
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "56"
    assert launch.launcher_env(accelerate, {})["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "70"
    assert launch.launcher_env(accelerate, {"PROSPECT_CANCEL_GRACE_S": "x"})[
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "70"
    kept = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "5", "PROSPECT_CANCEL_GRACE_S": "60"}
    assert launch.launcher_env(accelerate, kept)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "5"
    mlx = LaunchPlan(launcher="mlx", processes=2)
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in launch.launcher_env(mlx, {})


COUNTER = """
import signal, sys
count = 0
def on_term(signum, frame):
    global count
    count += 1
    print(f"term {count}", flush=True)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "end":
        break
for _ in range(10000):  # a signal already delivered runs its handler in this loop
    pass
print(f"count {count}", flush=True)
"""


def test_only_the_first_cancel_reaches_the_launcher(tmp_path, capsys):
    """A second SIGTERM would start torchrun's shutdown again, a third end it before its
    cleanup: the launcher (here a process counting SIGTERMs) is told once."""
    child = subprocess.Popen([sys.executable, "-c", COUNTER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        forwarder = launch.Forwarder(LaunchPlan(launcher="accelerate", processes=2),
                                     tmp_path, child)
        forwarder.on_signal(signal.SIGTERM, None)
        assert child.stdout.readline() == "term 1\n"
        forwarder.on_signal(signal.SIGTERM, None)
        forwarder.on_signal(signal.SIGINT, None)
        child.stdin.write("end\n")
        child.stdin.flush()
        assert child.stdout.readline() == "count 1\n"
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert capsys.readouterr().out.count("ignored: the cancel is already under way") == 1
