"""The `prospect` command: init, serve, submit, jobs, doctor."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from app.config import Settings, get_settings


def cmd_init(settings: Settings, _args: argparse.Namespace) -> int:
    from app.db import make_engine, migrate
    from app.hub.demo import build_demo, register_demo

    settings.ensure_dirs()
    engine = make_engine(settings.db_path)
    migrate(engine)
    t0 = time.monotonic()
    print(f"Prospect home: {settings.home_dir}")
    print("Building the offline demo model and dataset (once)...", flush=True)
    paths = build_demo(settings)
    register_demo(engine, paths)
    print(f"  model   tiny-demo  {paths['model']}")
    print(f"  dataset demo-kto   {paths['dataset']}")
    print(f"Ready in {time.monotonic() - t0:.1f}s. Start the dashboard with `prospect serve`.")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from app.server_lock import HomeInUse, acquire

    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    settings.ensure_dirs()
    try:  # one server per home: said at once, before the app (and uvicorn) load
        lock = acquire(settings.home_dir, settings.host, settings.port)
    except HomeInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    from app.main import create_app

    app = create_app(settings)
    app.state.home_lock = lock
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"Prospect dashboard: http://{host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                reload=False)
    return 0


def _request(settings: Settings, method: str, path: str, body: dict | None = None):
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if settings.api_token:
        req.add_header("Authorization", f"Bearer {settings.api_token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except urllib.error.URLError as exc:
        raise SystemExit(f"cannot reach Prospect at {url} ({exc.reason}); start it with "
                         "`prospect serve`") from None


def load_job_file(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: a job file holds one object (name, model, dataset, params)")
    return data


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    status, body = _request(settings, "POST", "/api/jobs", load_job_file(Path(args.file)))
    if status != 201:
        for err in (body or {}).get("detail", []) if isinstance(body, dict) else []:
            if isinstance(err, dict):
                print(f"error: {err.get('field')}: {err.get('msg')}", file=sys.stderr)
            else:
                print(f"error: {err}", file=sys.stderr)
        if not isinstance((body or {}).get("detail"), list):
            print(f"error ({status}): {body}", file=sys.stderr)
        return 1
    print(body["id"])
    return 0


def cmd_jobs(settings: Settings, _args: argparse.Namespace) -> int:
    status, jobs = _request(settings, "GET", "/api/jobs")
    if status != 200:
        print(f"error ({status}): {jobs}", file=sys.stderr)
        return 1
    rows = [("ID", "STATUS", "NAME", "BACKEND", "STEP", "MODEL")]
    for j in jobs:
        step = f"{j['step']}/{j['total_steps']}" if j["total_steps"] else str(j["step"])
        rows.append((str(j["id"]), j["status"], j["name"], f"{j['backend']}/{j['method']}",
                     step, j["model"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 1 when a check found a problem, so a script can stop before training."""
    from app.system.doctor import PROBLEM, doctor, format_text

    result = doctor(settings)
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 1 if result["status"] == PROBLEM else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prospect", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the home folder, migrate, build the offline demo")
    serve = sub.add_parser("serve", help="start the dashboard")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--log-level", default="info")
    submit = sub.add_parser("submit", help="submit a job from a JSON or YAML file")
    submit.add_argument("file")
    sub.add_parser("jobs", help="list jobs")
    doctor = sub.add_parser("doctor", help="check this machine: backends, devices, memory, disk")
    doctor.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    args = parser.parse_args(argv)
    handler = {"init": cmd_init, "serve": cmd_serve, "submit": cmd_submit, "jobs": cmd_jobs,
               "doctor": cmd_doctor}
    return handler[args.command](get_settings(), args)


if __name__ == "__main__":
    raise SystemExit(main())
