"""workers/runtime.py: the frame every worker runs in, with a body that trains nothing."""

import errno
import signal
from pathlib import Path

import pytest

from contract.events import EVENTS_FILE, read_events
from contract.job_config import write_config
from workers.runtime import (
    Backend,
    Cancelled,
    HintedError,
    ModelNotFound,
    RunResult,
    describe_error,
    kto_stats_line,
    loading_model,
    run_dir_of,
    run_worker,
)


@pytest.fixture(autouse=True)
def _signals_back():
    """run_worker installs its handlers, then ignores SIGTERM/SIGINT: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def backend(body) -> Backend:
    return Backend(name="torch", doc=None, environment={}, checkpoint_files=(),
                   is_checkpoint=Path.is_dir, body=body,
                   describe=lambda exc, raw: describe_error(exc))


def run(tmp_path: Path, body, **change) -> tuple[int, list]:
    fields = dict(job_id=1, backend="torch", method="kto", model="/m", dataset="/d.jsonl",
                  params={}, resume_from_checkpoint=None)
    config = write_config(tmp_path, **{**fields, **change})
    rc = run_worker(backend(body), ["--config", str(config), "--memory-interval", "60"])
    events, _ = read_events(tmp_path / EVENTS_FILE)
    return rc, events


def test_a_body_that_succeeds_ends_with_done_and_its_summary(tmp_path):
    def body(job, session):
        session.events.emit("log", level="info", message=f"beta {job.args.beta}")
        return RunResult("succeeded", {"steps": 3})

    rc, events = run(tmp_path, body, params={"beta": 0.3})
    assert rc == 0
    assert [e.type for e in events][0] == "log" and events[0].data["message"] == "beta 0.3"
    assert events[-1].type == "done" and events[-1].data["status"] == "succeeded"
    assert events[-1].data["summary"]["steps"] == 3


def test_a_failure_is_one_error_event_with_a_hint_and_exit_1(tmp_path):
    def body(job, session):
        raise ModelNotFound("no model folder at /m")

    rc, events = run(tmp_path, body)
    assert rc == 1
    error = next(e.data for e in events if e.type == "error")
    assert error["error_type"] == "model_not_found" and "PROSPECT_ALLOW_DOWNLOADS" in error["hint"]
    assert events[-1].type == "done" and events[-1].data["status"] == "failed"


def test_a_bad_config_fails_before_the_body_runs(tmp_path):
    called = []
    rc, events = run(tmp_path, lambda job, session: called.append(job), params={"batch": 2})
    assert rc == 1 and not called
    error = next(e.data for e in events if e.type == "error")
    assert (error["error_type"], error["field"]) == ("invalid_params", "batch")


def test_a_cancel_before_training_ends_cancelled_with_exit_0(tmp_path):
    def body(job, session):
        raise Cancelled("stopped by SIGTERM before training")

    rc, events = run(tmp_path, body)
    assert rc == 0
    assert events[-1].data["status"] == "cancelled" and events[-1].data["summary"]["steps"] == 0


def test_describe_error_knows_the_shared_failures():
    class DeviceError(HintedError):
        error_type = "device"

    device = describe_error(DeviceError("No CUDA here.", "Set device to cpu."))
    assert device == {"error_type": "device", "message": "No CUDA here.",
                      "hint": "Set device to cpu."}
    full = describe_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full["error_type"] == "disk_full"
    oom = describe_error(RuntimeError("out of memory"), lambda exc, text: "Lower the batch.")
    assert (oom["error_type"], oom["hint"]) == ("out_of_memory", "Lower the batch.")
    assert describe_error(RuntimeError("out of memory"))["error_type"] == "RuntimeError"
    assert describe_error(ValueError("no chat template"))["error_type"] == "chat_template"


def test_loading_model_turns_missing_files_into_model_not_found():
    with (pytest.raises(ModelNotFound, match="the folder /m holds no loadable model: gone"),
          loading_model("/m")):
        raise FileNotFoundError("gone")
    with pytest.raises(ModelNotFound, match="^'x' is not cached: gone"), \
            loading_model("/m", says="'x' is not cached"):
        raise OSError("gone")


def test_run_dir_is_the_configs_when_usable(tmp_path):
    config = tmp_path / "config.json"
    assert run_dir_of({"run_dir": "/runs/3"}, config) == Path("/runs/3")
    assert run_dir_of({"run_dir": "runs/3"}, config) == tmp_path
    assert run_dir_of({}, config) == tmp_path


def test_the_kto_stats_line_warns_off_the_papers_range():
    stats = {"rows": 10, "desirable": 5, "undesirable": 5, "desirable_weight_range": (1.0, 1.33)}
    assert kto_stats_line(stats, 1.0, 1.0) == ("info", "10 rows: 5 desirable, 5 undesirable")
    level, line = kto_stats_line(stats, 2.0, 1.0)
    assert level == "warning" and "λD·nD/(λU·nU) = 2.00" in line
    empty = {**stats, "undesirable": 0, "desirable_weight_range": None}
    assert kto_stats_line(empty, 1.0, 1.0)[0] == "warning"
