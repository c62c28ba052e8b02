"""app/hosts.py: the Hosts setting (hosts.json) checked, saved, read back, and a job's
hosts knob resolved into mlx hostfile entries."""

from __future__ import annotations

import json

import pytest

from app.config import Settings
from app.hosts import hosts_path, read_hosts, resolve_hosts, write_hosts
from contract.knob_core import ParamError

HERE = {"name": "here", "ssh": "127.0.0.1", "ips": ["192.168.1.10"]}
STUDIO = {"name": "studio", "ssh": "studio.local", "ips": ["192.168.1.20"]}
MINI = {"name": "mini", "ssh": "me@mini.local", "ips": ["fe80::1"]}


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path)


def setting(*hosts, backend="ring", envs=()):
    return {"backend": backend, "envs": list(envs), "hosts": [dict(h) for h in hosts]}


def test_absent_setting_reads_empty(settings):
    assert read_hosts(settings) == {}


def test_write_then_read_round_trips(settings):
    data = setting(HERE, STUDIO, MINI, envs=["MLX_METAL_FAST_SYNCH=1"])
    assert write_hosts(settings, data) == data
    assert read_hosts(settings) == data
    assert json.loads(hosts_path(settings).read_text())["hosts"][1]["ssh"] == "studio.local"


def test_backend_and_envs_default(settings):
    saved = write_hosts(settings, {"hosts": [HERE]})
    assert saved == {"backend": "ring", "envs": [], "hosts": [HERE]}


@pytest.mark.parametrize("data, field, words", [
    (setting(HERE, {**STUDIO, "name": "here"}), "hosts[1].name", "used twice"),
    (setting({**HERE, "name": ""}), "hosts[0].name", "non-empty"),
    (setting({**HERE, "name": "my mac"}), "hosts[0].name", "letters"),
    (setting({**HERE, "name": "all"}), "hosts[0].name", "'all' is taken"),
    (setting({**STUDIO, "ssh": ""}), "hosts[0].ssh", "ssh"),
    (setting({**STUDIO, "ssh": "studio; rm -rf ~"}), "hosts[0].ssh", "shell"),
    (setting({**STUDIO, "ssh": "-oProxyCommand=x"}), "hosts[0].ssh", "shell"),
    (setting({**STUDIO, "ssh": "localhost"}), "hosts[0].ssh", "127.0.0.1"),
    (setting({**STUDIO, "ips": ["192.168.1.300"]}), "hosts[0].ips[0]", "not an IPv4"),
    (setting({**STUDIO, "ips": "192.168.1.2"}), "hosts[0].ips", "list"),
    (setting({**STUDIO, "ips": []}), "hosts[0].ips", "ring backend"),
    (setting(STUDIO, backend="nccl"), "backend", "ring, jaccl, mpi"),
    (setting(STUDIO, envs=["1BAD=x"]), "envs[0]", "NAME=value"),
    (setting({**STUDIO, "port": 22}), "hosts[0].port", "unknown field"),
    (setting(HERE, STUDIO, backend="jaccl"), "hosts[0].rdma", "RDMA"),
    ({"backend": "ring", "hosts": {}}, "hosts", "list"),
    ([HERE], "hosts", "JSON object"),
])
def test_bad_setting_names_the_field(settings, data, field, words):
    with pytest.raises(ParamError) as err:
        write_hosts(settings, data)
    assert err.value.field == field
    assert words in err.value.message
    assert not hosts_path(settings).exists()  # nothing half-saved


def test_mpi_needs_no_ips(settings):
    saved = write_hosts(settings, setting({**HERE, "ips": []}, {**STUDIO, "ips": []},
                                          backend="mpi"))
    assert [h["ips"] for h in saved["hosts"]] == [[], []]


def test_hand_broken_file_is_a_clear_error(settings):
    hosts_path(settings).write_text("{not json")
    with pytest.raises(ParamError, match="not valid JSON"):
        read_hosts(settings)
    hosts_path(settings).write_text(json.dumps(setting({**STUDIO, "ips": ["x"]})))
    with pytest.raises(ParamError) as err:
        read_hosts(settings)
    assert err.value.field == "hosts[0].ips[0]" and "hosts.json" in err.value.message
    with pytest.raises(ParamError) as err:  # a job's knob is named, the file's field told
        resolve_hosts("all", settings)
    assert err.value.field == "hosts" and "hosts[0].ips[0]" in err.value.message


def test_resolve_puts_this_mac_first(settings):
    write_hosts(settings, setting(STUDIO, HERE, MINI))
    assert resolve_hosts("studio, here", settings) == [
        {"ssh": "127.0.0.1", "ips": ["192.168.1.10"]},
        {"ssh": "studio.local", "ips": ["192.168.1.20"]}]
    assert [h["ssh"] for h in resolve_hosts("all", settings)] == [
        "127.0.0.1", "studio.local", "me@mini.local"]


def test_resolve_unknown_name(settings):
    write_hosts(settings, setting(HERE, STUDIO))
    with pytest.raises(ParamError) as err:
        resolve_hosts("here,laptop", settings)
    assert err.value.field == "hosts"
    assert err.value.message == ("unknown host laptop; the Hosts setting has here, studio: "
                                 "add it on the System page or PUT /api/settings/hosts")


@pytest.mark.parametrize("text", ["here", "all"])
def test_resolve_one_host_is_not_distributed(settings, text):
    write_hosts(settings, setting(HERE))
    with pytest.raises(ParamError, match="one host is a single-process job, leave hosts "
                       "empty"):
        resolve_hosts(text, settings)


def test_resolve_without_a_setting(settings):
    with pytest.raises(ParamError, match="unknown host studio; the Hosts setting has no "
                       "hosts"):
        resolve_hosts("studio,mini", settings)


def test_resolve_needs_this_mac(settings):
    write_hosts(settings, setting(HERE, STUDIO, MINI))
    with pytest.raises(ParamError, match="none of the chosen hosts is this Mac"):
        resolve_hosts("studio,mini", settings)


def test_resolve_twice_named(settings):
    write_hosts(settings, setting(HERE, STUDIO))
    with pytest.raises(ParamError, match="twice"):
        resolve_hosts("here,studio,here", settings)


def test_jaccl_keeps_the_settings_order_and_rdma(settings):
    rdma = [[None, "rdma_en2"], ["rdma_en2", None]]
    write_hosts(settings, setting({**HERE, "rdma": rdma[0]}, {**STUDIO, "rdma": rdma[1]},
                                  backend="jaccl"))
    assert [h["rdma"] for h in resolve_hosts("all", settings)] == rdma
    write_hosts(settings, setting({**STUDIO, "rdma": rdma[0]}, {**HERE, "rdma": rdma[1]},
                                  backend="jaccl"))
    with pytest.raises(ParamError, match="this Mac listed first"):
        resolve_hosts("all", settings)
