"""The `prospect` command against the real server."""

import subprocess
import sys

from tests.helpers import ROOT


def prospect(server, *args: str) -> subprocess.CompletedProcess:
    from tests.helpers.server import server_env

    env = server_env(server.home, PROSPECT_PORT=str(server.port))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_submit_a_yaml_job_then_list_it(live_server, tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: from-yaml\nmodel: tiny-demo\ndataset: demo-kto\n"
                        "params:\n  max_steps: 2\n  logging_steps: 1\n"
                        "  gradient_accumulation_steps: 1\n  max_length: 128\n")
    out = prospect(live_server, "submit", str(job_file))
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.strip())
    job = live_server.wait_job(job_id)
    assert job["status"] == "succeeded" and job["name"] == "from-yaml"
    table = prospect(live_server, "jobs").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "NAME"]
    assert any(line.split()[:3] == [str(job_id), "succeeded", "from-yaml"] for line in table)


def test_submit_reports_validation_errors_and_fails(live_server, tmp_path):
    job_file = tmp_path / "job.json"
    job_file.write_text('{"model": "tiny-demo", "dataset": "demo-kto", '
                        '"params": {"per_device_train_batch_size": 1}}')
    out = prospect(live_server, "submit", str(job_file))
    assert out.returncode == 1
    assert "per_device_train_batch_size" in out.stderr and "at least 2" in out.stderr


def test_submit_without_a_server_says_how_to_start_one(tmp_path):
    from tests.helpers.server import free_port, server_env

    job_file = tmp_path / "job.json"
    job_file.write_text('{"model": "tiny-demo", "dataset": "demo-kto"}')
    env = server_env(tmp_path, PROSPECT_PORT=str(free_port()))
    out = subprocess.run([sys.executable, "-m", "app.cli", "submit", str(job_file)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "prospect serve" in out.stderr
