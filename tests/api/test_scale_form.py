"""The new-job form's scale knobs (app/web/scale_form.py): offered where they can do
something (2+ CUDA GPUs for torch, 2+ hosts in the Hosts setting for MLX), hidden elsewhere
with their defaults kept, and counted in the effective batch. The machine poses as one with
two (or one) GPUs through app.state.probes."""

from __future__ import annotations

import re

import pytest

from app.hosts import write_hosts
from app.system.machine import Probes
from tests.helpers.pages import HX, controls

TWO = "0, NVIDIA H200, 143771, 143000, 500\n1, NVIDIA H200, 143771, 143000, 500\n"
ONE = "0, NVIDIA H200, 143771, 143000, 500\n"
HOSTS = {"hosts": [{"name": "here", "ssh": "127.0.0.1", "ips": ["192.168.1.10"]},
                   {"name": "studio", "ssh": "studio.local", "ips": ["192.168.1.20"]}]}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def gpus(app, smi: str | None) -> None:
    app.state.probes = Probes(nvidia_smi=lambda: smi, torch_cuda=lambda: "12.8",
                              has_module=lambda name: name == "torch")


def test_two_gpus_offer_the_scale_group(app, client):
    gpus(app, TWO)
    html = client.get("/jobs/new").text
    assert 'data-group="scale"' in html and "<legend>Scale</legend>" in html
    c = controls(html)
    assert c["params.gpu_ids"]["value"] == ""
    select = re.search(r'<select id="f-num_processes".*?</select>', html, re.S).group(0)
    assert re.findall(r'<option value="(\d+)"', select) == ["1", "2"]
    assert re.search(r'value="1" selected', select)
    assert re.search(r'<select id="f-distributed"', html)


@pytest.mark.parametrize("smi", [ONE, None])
def test_one_or_no_gpu_hides_them(app, client, smi):
    gpus(app, smi)
    html = client.get("/jobs/new").text
    assert 'data-group="scale"' not in html and "params.num_processes" not in html
    assert "params.gpu_ids" not in html and "params.distributed" not in html


def test_a_cuda_less_torch_build_does_not_offer_gpus(app, client):
    app.state.probes = Probes(nvidia_smi=lambda: TWO, torch_cuda=lambda: None)
    assert 'data-group="scale"' not in client.get("/jobs/new").text


def test_a_knob_swap_keeps_offering_them(app, client):
    gpus(app, TWO)
    data = {"method": "torch/kto", "knobs_method": "mlx/sft", "model_choice": "tiny-demo",
            "dataset_choice": "demo-kto"}
    html = client.post("/fragments/job-form/knobs", data=data, headers=HX).text
    assert 'data-testid="gpus-select"' in html


def test_effective_batch_counts_the_processes(app, client):
    gpus(app, TWO)
    html = client.get("/jobs/new?num_processes=2&per_device_train_batch_size=4"
                      "&gradient_accumulation_steps=2").text
    assert 'data-testid="effective-batch-value">16<' in html
    assert "× num_processes 2" in html
    assert re.search(r'<option value="2" selected', html)
    one = client.get("/jobs/new?per_device_train_batch_size=4&gradient_accumulation_steps=2")
    assert 'data-testid="effective-batch-value">8<' in one.text
    assert "num_processes 1" not in one.text


def test_a_value_from_a_bigger_machine_is_shown_not_dropped(app, client):
    gpus(app, None)
    html = client.get("/jobs/new?num_processes=4").text
    assert 'data-group="scale"' in html
    assert controls(html)["params.num_processes"]["value"] == "4"


def test_mlx_hosts_knob_needs_two_hosts(app, client):
    html = client.get("/jobs/new?backend=mlx").text
    assert "params.hosts" not in html
    write_hosts(app.state.settings, {"hosts": HOSTS["hosts"][:1]})
    assert "params.hosts" not in client.get("/jobs/new?backend=mlx").text
    write_hosts(app.state.settings, HOSTS)
    html = client.get("/jobs/new?backend=mlx").text
    assert controls(html)["params.hosts"]["value"] == ""
    assert '<datalist id="hosts-names"><option value="all"><option value="here">' in html
    assert "The Hosts setting has here, studio" in html
    sft = client.get("/jobs/new?backend=mlx&method=sft").text
    assert "params.hosts" in sft
    assert "params.num_processes" not in sft  # torch's knob, not MLX's


def test_an_unknown_host_is_refused_beside_the_knob(app, client):
    write_hosts(app.state.settings, HOSTS)
    data = {"name": "", "method": "mlx/kto", "model_choice": "tiny-demo", "model_text": "",
            "dataset_choice": "demo-kto", "dataset_text": "", "knobs_method": "mlx/kto",
            "knobs_model": "tiny-demo", "params.hosts": "here,laptop"}
    r = client.post("/jobs/new", data=data, headers=HX)
    assert r.status_code == 200 and "HX-Redirect" not in r.headers
    assert 'id="err-params-hosts"' in r.text
    assert "unknown host laptop; the Hosts setting has here, studio" in r.text
    assert controls(r.text)["params.hosts"]["value"] == "here,laptop"
