"""The Hosts setting: the Macs an MLX job may spread over with ``mlx.launch``.

It lives in ``<PROSPECT_HOME>/hosts.json`` in mlx's own hostfile format plus a ``name`` per
host, the name a job's ``hosts`` knob uses::

    {"backend": "ring", "envs": [],
     "hosts": [{"name": "here", "ssh": "127.0.0.1", "ips": ["192.168.1.10"]},
               {"name": "studio", "ssh": "studio.local", "ips": ["192.168.1.20"]}]}

``mlx.launch`` runs a host whose ssh is ``127.0.0.1`` locally and every other one through
``ssh``; the ring and jaccl backends connect the processes over the ``ips``, so those
backends need them. Rank 0 writes the run's events and checkpoints into the run folder on
this Mac, so a job's hosts must include this Mac (ssh 127.0.0.1), which becomes rank 0.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

from app.config import Settings
from contract.knob_core import ParamError
from contract.knobs_scale import parse_hosts

HOSTS_FILE = "hosts.json"
MLX_BACKENDS = ("ring", "jaccl", "mpi")
NEEDS_IPS = ("ring", "jaccl")  # mlx.launch refuses these without an IP per host
LOCAL_SSH = "127.0.0.1"  # the one name mlx.launch starts without ssh
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# An ssh destination: [user@]host, an IPv6 address with its zone. No spaces or shell
# characters (mlx.launch hands it to ssh), and no leading "-" (ssh would read an option).
_SSH = re.compile(r"^[A-Za-z0-9._@:%-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIX = "add it on the System page or PUT /api/settings/hosts"


def hosts_path(settings: Settings) -> Path:
    return settings.home_dir / HOSTS_FILE


def read_hosts(settings: Settings) -> dict[str, Any]:
    """The setting as saved ({} when there is none). A file edited by hand into something
    invalid is a ParamError naming the file and the fix, never a crash further on."""
    path = hosts_path(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ParamError("hosts", f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ParamError("hosts", f"{path} is not valid JSON ({exc}); fix it, or save the "
                         "Hosts setting again from the System page") from None
    try:
        return check_hosts(data)
    except ParamError as exc:
        raise ParamError(exc.field, f"{path}: {exc.message}") from None


def write_hosts(settings: Settings, data: Any) -> dict[str, Any]:
    """Validate and save the setting; return it as saved. Raises ParamError naming the
    field (``hosts[1].ips``) and the fix."""
    clean = check_hosts(data)
    path = hosts_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{HOSTS_FILE}.tmp")
    tmp.write_text(json.dumps(clean, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return clean


def check_hosts(data: Any) -> dict[str, Any]:
    """The setting in its normal form: backend, envs, hosts [{name, ssh, ips[, rdma]}]."""
    if not isinstance(data, dict):
        raise ParamError("hosts", 'must be a JSON object: {"backend": "ring", "envs": [], '
                         '"hosts": [{"name": …, "ssh": …, "ips": […]}]}')
    unknown = sorted(set(data) - {"backend", "envs", "hosts"})
    if unknown:
        raise ParamError(unknown[0], "unknown field; the Hosts setting has backend, envs "
                         "and hosts")
    backend = data.get("backend", "ring")
    if backend not in MLX_BACKENDS:
        raise ParamError("backend", f"must be one of {', '.join(MLX_BACKENDS)} (mlx.launch's "
                         f"backends for Macs); got {backend!r}")
    envs = data.get("envs", [])
    if not isinstance(envs, list):
        raise ParamError("envs", 'must be a list of "NAME=value" strings')
    for i, env in enumerate(envs):
        key = env.partition("=")[0] if isinstance(env, str) else ""
        if not isinstance(env, str) or "=" not in env or not _ENV_KEY.match(key) \
                or "\n" in env:
            raise ParamError(f"envs[{i}]", f'must be "NAME=value" with a NAME of letters, '
                             f"digits and _; got {env!r}")
    hosts = data.get("hosts", [])
    if not isinstance(hosts, list):
        raise ParamError("hosts", "must be a list of hosts")
    clean = [_check_host(i, h, backend, len(hosts)) for i, h in enumerate(hosts)]
    seen: set[str] = set()
    for i, host in enumerate(clean):
        if host["name"] in seen:
            raise ParamError(f"hosts[{i}].name", f"{host['name']!r} is used twice; give "
                             "each host its own name")
        seen.add(host["name"])
    return {"backend": backend, "envs": list(envs), "hosts": clean}


def _check_host(i: int, host: Any, backend: str, count: int) -> dict[str, Any]:
    where = f"hosts[{i}]"
    if not isinstance(host, dict):
        raise ParamError(where, 'must be an object: {"name": …, "ssh": …, "ips": […]}')
    unknown = sorted(set(host) - {"name", "ssh", "ips", "rdma"})
    if unknown:
        raise ParamError(f"{where}.{unknown[0]}", "unknown field; a host has name, ssh, ips "
                         "(and rdma for jaccl)")
    name = host.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ParamError(f"{where}.name", "must be a non-empty name of letters, digits, "
                         f"'.', '_' and '-' (jobs name the host by it); got {name!r}")
    if name == "all":
        raise ParamError(f"{where}.name", "'all' is taken: a job's hosts=all means every "
                         "host; choose another name")
    ssh = host.get("ssh")
    if not isinstance(ssh, str) or not _SSH.match(ssh) or ssh.startswith("-"):
        raise ParamError(f"{where}.ssh", "must be what you would type after ssh "
                         "([user@]hostname or an address), without spaces or shell "
                         f"characters; got {ssh!r}")
    if ssh in ("localhost", "::1"):
        raise ParamError(f"{where}.ssh", f"use {LOCAL_SSH} for this Mac: mlx.launch starts "
                         f"only {LOCAL_SSH} without ssh")
    ips = host.get("ips", [])
    if not isinstance(ips, list):
        raise ParamError(f"{where}.ips", "must be a list of IP addresses")
    for j, ip in enumerate(ips):
        try:
            ipaddress.ip_address(ip if isinstance(ip, str) else "")
        except ValueError:
            raise ParamError(f"{where}.ips[{j}]", f"{ip!r} is not an IPv4 or IPv6 "
                             "address") from None
    if backend in NEEDS_IPS and not ips:
        raise ParamError(f"{where}.ips", f"the {backend} backend connects the Macs by IP: "
                         f"give this host's address on the network the Macs share (e.g. "
                         f"192.168.1.20), or choose the mpi backend")
    out: dict[str, Any] = {"name": name, "ssh": ssh, "ips": list(ips)}
    if "rdma" in host:
        out["rdma"] = _check_rdma(where, host["rdma"], count)
    elif backend == "jaccl":
        raise ParamError(f"{where}.rdma", f"jaccl needs each host's RDMA device toward "
                         f"every host: a list of {count} entries, null for the host itself")
    return out


def _check_rdma(where: str, rdma: Any, count: int) -> list:
    if not isinstance(rdma, list) or len(rdma) != count or \
            not all(d is None or isinstance(d, str) for d in rdma):
        raise ParamError(f"{where}.rdma", f"must list {count} RDMA device names (one toward "
                         "each host, in the hosts' order; null toward itself)")
    return list(rdma)


def resolve_hosts(names_text: str, settings: Settings) -> list[dict[str, Any]]:
    """A job's ``hosts`` knob ("studio,here" or "all") as mlx hostfile entries
    [{"ssh", "ips"(, "rdma")}], this Mac first: it is rank 0, which writes the run's events.
    ParamError("hosts", …) names what is wrong and the fix."""
    try:
        setting = read_hosts(settings)
    except ParamError as exc:  # a job names its hosts knob; the file's own field is in words
        raise ParamError("hosts", f"the Hosts setting cannot be used: {exc.field}: "
                         f"{exc.message}") from None
    known = setting.get("hosts", [])
    known_names = ", ".join(h["name"] for h in known) or "no hosts"
    asked = parse_hosts(names_text or "")
    if [n.lower() for n in asked] == ["all"]:
        chosen = list(known)
    else:
        by_name = {h["name"]: h for h in known}
        for name in asked:
            if name not in by_name:
                raise ParamError("hosts", f"unknown host {name}; the Hosts setting has "
                                 f"{known_names}: {_FIX}")
        if len(set(asked)) != len(asked):
            raise ParamError("hosts", f"names a host twice: {names_text!r}")
        chosen = [by_name[n] for n in asked]
    if len(chosen) < 2:
        raise ParamError("hosts", f"{len(chosen)} host(s) chosen ({known_names} in the Hosts "
                         "setting): one host is a single-process job, leave hosts empty; "
                         f"or name two or more hosts ({_FIX})")
    local = [h for h in chosen if h["ssh"] == LOCAL_SSH]
    if not local:
        raise ParamError("hosts", f"none of the chosen hosts is this Mac (ssh {LOCAL_SSH}): "
                         "rank 0 runs here and writes the run's events, so include this Mac; "
                         f"{_FIX} if it is not listed")
    if setting.get("backend") == "jaccl":
        # Its RDMA table is indexed by the setting's order: no subset, no reordering.
        if len(chosen) != len(known) or known[0]["ssh"] != LOCAL_SSH:
            raise ParamError("hosts", "the jaccl backend's RDMA table covers every host in "
                             "the setting's order: use hosts=all with this Mac listed first, "
                             "or the ring backend")
        ordered = list(known)
    else:
        ordered = local + [h for h in chosen if h["ssh"] != LOCAL_SSH]
    return [{k: v for k, v in h.items() if k != "name"} for h in ordered]
