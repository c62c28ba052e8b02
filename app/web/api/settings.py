"""Settings kept in the home folder and changed while the server runs: the Hosts setting
(app/hosts.py), the Macs an MLX job may spread over with mlx.launch. The System page's Hosts
section (app/web/pages/system.py) edits the same file through the same functions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from app.errors import JobInputError
from app.hosts import check_hosts, read_hosts, write_hosts
from app.web.deps import SettingsDep
from contract.knob_core import ParamError

router = APIRouter(tags=["settings"])

HOSTS_EXAMPLE = {"backend": "ring", "envs": [], "hosts": [
    {"name": "here", "ssh": "127.0.0.1", "ips": ["192.168.1.10"]},
    {"name": "studio", "ssh": "studio.local", "ips": ["192.168.1.20"]}]}


def hosts_or_422(settings) -> dict[str, Any]:
    try:
        return read_hosts(settings) or check_hosts({})
    except ParamError as exc:
        raise JobInputError(exc.field, exc.message) from None


@router.get("/api/settings/hosts")
def get_hosts(settings: SettingsDep) -> dict[str, Any]:
    """The Hosts setting: backend (ring, jaccl or mpi), envs ["NAME=value"] and hosts
    [{name, ssh, ips}] (mlx.launch's hostfile plus a name per host, which a job's `hosts`
    knob uses). Empty hosts when none are set. This Mac is the host with ssh 127.0.0.1."""
    return hosts_or_422(settings)


@router.put("/api/settings/hosts")
def put_hosts(settings: SettingsDep,
              data: Annotated[Any, Body(examples=[HOSTS_EXAMPLE])]) -> dict[str, Any]:
    """Replace the Hosts setting; returns it as saved. Names are unique (letters, digits,
    . _ -), ssh is what you would type after `ssh`, ips are IPv4/IPv6 addresses (the ring
    and jaccl backends need one per host). A bad field is a 422 naming it, e.g.
    hosts[1].ips[0]."""
    try:
        return write_hosts(settings, data)
    except ParamError as exc:
        raise JobInputError(exc.field, exc.message) from None
