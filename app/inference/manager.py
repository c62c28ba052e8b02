"""The inference workers this server holds: at most one per (backend, base model path).

A worker starts on the first request for its model and stays loaded for the next; it is
stopped after ``settings.inference_idle_s`` without a request, on Unload, when a training
job about to start needs the memory (``make_room``, called by the supervisor), and when the
server stops. Loading a model that would not fit beside the running jobs (at their planned
peak) and the other loaded models is refused with a 409 and the plan; idle loaded models in
its way are unloaded first.

Thread-safe: the supervisor's pass runs in a thread, the routes in the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.config import Settings
from app.db import ROOT
from app.inference import catalog
from app.inference.catalog import Target, parse_id
from app.inference.errors import InferenceError
from app.inference.worker import InferenceWorker, Request, _iso, tree_rss
from app.models import Job, JobStatus
from app.planner.check import (
    device_for,
    machine,
    model_facts,
    plan_beside,
    plan_job,
    set_reclaimable,
)
from app.planner.estimate import NO_FIT
from app.planner.inference import inference_estimate
from contract.launch_env import worker_env

log = logging.getLogger("prospect.inference")


class InferenceManager:
    def __init__(self, engine: Engine, settings: Settings, worker_cmd: list[str] | None = None,
                 facts: dict[str, bool] | None = None):
        self.engine = engine
        self.settings = settings
        if worker_cmd is None:
            worker_cmd = shlex.split(settings.inference_worker_cmd) \
                if settings.inference_worker_cmd else [settings.python or sys.executable]
        self.worker_cmd = worker_cmd
        self.facts = facts  # platform facts for the backend choice (None: this machine's)
        self.workers: dict[tuple[str, str], InferenceWorker] = {}
        self.last_unload: dict[str, Any] | None = None
        self._lock = threading.RLock()
        set_reclaimable(self.reclaimable)  # job plans count loaded models as free

    # --- which models ----------------------------------------------------------------------
    def loaded(self) -> dict[str, list[str]]:
        """Model path -> backends that have it loaded (or loading)."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for (backend, path), w in self.workers.items():
                if w.alive:
                    out.setdefault(path, []).append(backend)
        return out

    def models(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            return catalog.list_models(session, self.loaded())

    def resolve(self, model_id: str, backend: str | None = None) -> Target:
        with Session(self.engine) as session:
            return catalog.resolve(session, self.settings, model_id, backend, self.loaded(),
                                   self.facts)

    # --- starting and using a worker ------------------------------------------------------
    def open(self, target: Target) -> InferenceWorker:
        """The live worker for the target's model, started (after the memory check) if
        there is none. Blocking: call it in a thread."""
        key = (target.backend, target.model_path)
        with self._lock:
            worker = self.workers.get(key)
            if worker is not None and worker.alive:
                return worker
            self._check_fits(target)
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(target.model_path).name)[:80]
            worker = InferenceWorker(
                target.backend, target.model_path, target.base,
                [*self.worker_cmd, "-m", f"workers.{target.backend}.serve", "--model",
                 target.model_path],
                self.settings.home_dir / "inference" / f"{target.backend}-{slug}.log",
                self._env(target.backend), cwd=ROOT, on_exit=self._exited)
            try:
                worker.start()
            except OSError as exc:
                raise InferenceError(500, f"could not start the inference worker: {exc}",
                                     "worker_start_failed") from None
            self.workers[key] = worker
            log.info("inference worker %s: loading %s (%s)", worker.pid, target.base,
                     target.backend)
            return worker

    async def submit(self, target: Target, message: dict[str, Any]
                     ) -> tuple[InferenceWorker, Request]:
        """Queue a generate message on the target's worker; replies come on the request's
        queue (start, tokens, then done or error)."""
        # asyncio's executor, not anyio's: the worker dies with the thread that started it
        # (PR_SET_PDEATHSIG), and anyio ends idle threads; these live as long as the loop.
        worker = await asyncio.to_thread(self.open, target)
        req = Request(message["id"], message, asyncio.get_running_loop())
        worker.submit(req, target.id if target.adapter else None)
        return worker, req

    def _env(self, backend: str) -> dict[str, str]:
        env = worker_env(os.environ, backend)
        env.pop("PROSPECT_API_TOKEN", None)  # the worker needs no secret of the server
        if self.settings.allow_downloads:
            env.update(HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0")
        return env

    def _exited(self, worker: InferenceWorker) -> None:
        with self._lock:
            key = (worker.backend, worker.model_path)
            if self.workers.get(key) is worker:
                del self.workers[key]

    # --- memory ----------------------------------------------------------------------------
    def reclaimable(self) -> tuple[int, int]:
        """(resident, accelerator) bytes the loaded models hold: freed by unloading them."""
        rss = dev = 0
        for w in self._alive():
            r = w.rss_bytes()
            rss += r
            dev += max(0, (w.memory_bytes or 0) - r)
        return rss, dev

    def _alive(self) -> list[InferenceWorker]:
        with self._lock:
            return [w for w in self.workers.values() if w.alive]

    def _running_jobs(self, system: dict[str, Any], skip: int | None = None
                      ) -> tuple[list[dict[str, Any]], int]:
        """Running jobs at their planned peak, and the memory their processes hold now."""
        out, held = [], 0
        with Session(self.engine) as session:
            jobs = session.exec(select(Job).where(
                Job.status.in_([JobStatus.starting, JobStatus.running]))).all()
        for job in jobs:
            if job.id == skip:
                continue
            held += tree_rss(job.pid)
            plan = plan_job(job.model_path, job.backend, job.method, job.params, system)
            est = (plan.get("estimate") or {}).get("total_bytes") or 0
            out.append({"name": f"job {job.id} ({job.name or job.method})", "bytes": int(est),
                        "job_id": job.id})
        return out, held

    def _system(self, skip_job: int | None = None):
        """The machine with what our workers and jobs hold counted back in; the running jobs
        (planned peaks) and the loaded models (what they hold) to plan beside."""
        rss, dev = self.reclaimable()
        gb = self.settings.memory_budget_gb
        cap = int(gb * 2**30) if gb else 0  # 0: no cap (None would read the environment)
        base = machine(reclaim=False, cap=cap)
        jobs, job_rss = self._running_jobs(base, skip_job)
        system = machine((rss + job_rss, dev), reclaim=False, system=base, cap=cap)
        return system, jobs

    def _models_beside(self, exclude: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        return [{"name": f"{w.model} loaded ({w.backend})",
                 "bytes": int(w.memory_bytes or w.rss_bytes())}
                for w in self._alive() if (w.backend, w.model_path) != exclude]

    def _check_fits(self, target: Target) -> None:
        """409 with the plan when the model would not fit beside what runs; loaded models
        that stand idle in the way are unloaded first."""
        facts, _ = model_facts(target.model_path)
        if facts is None:  # nothing to plan with: the worker's own load says
            return
        system, jobs = self._system()
        device = device_for(target.backend, system)
        est = inference_estimate(facts, target.backend, device)
        new = {"name": f"{target.base} ({target.backend})", "bytes": int(est["total_bytes"])}
        result = plan_beside(new, jobs + self._models_beside(), device, system)
        if result["verdict"] == NO_FIT:
            idle = [w for w in self._alive() if not w.busy and not w.waiting]
            if idle and plan_beside(new, jobs, device, system)["verdict"] != NO_FIT:
                for w in idle:
                    self._unload([w], f"{target.base} needed the memory")
                result = plan_beside(new, jobs + self._models_beside(), device, system)
        if result["verdict"] == NO_FIT:
            what = "finish or cancel the running job" if jobs else "unload a loaded model"
            raise InferenceError(409, f"{target.base} was not loaded: it would not fit in "
                                 f"memory. {result['message']}. To load it, {what}, or pick "
                                 "a smaller model.", "memory", "model",
                                 extra={"plan": {**result, "estimate": est}})

    def make_room(self, job: Job) -> None:
        """Before the supervisor starts ``job``: unload the loaded models if the job would
        not fit beside them. Never raises (the job starts either way)."""
        try:
            if not self._alive():
                return
            with self._lock:
                system, jobs = self._system(skip_job=job.id)
                plan = plan_job(job.model_path, job.backend, job.method, job.params, system)
                if plan.get("verdict") == "unknown":
                    return
                need = {"name": f"job {job.id}", "bytes": int(plan["estimate"]["total_bytes"])}
                result = plan_beside(need, jobs + self._models_beside(), plan["device"],
                                     system)
                if result["verdict"] == NO_FIT:
                    log.info("job %s needs the memory: unloading the loaded models (%s)",
                             job.id, result["message"])
                    self._unload(self._alive(), f"job {job.id} needed the memory")
        except Exception:
            log.exception("job %s: could not check the loaded models' memory", job.id)

    # --- unloading -------------------------------------------------------------------------
    def unload(self, model: str | None = None, backend: str | None = None,
               reason: str = "unloaded on request") -> list[dict[str, str]]:
        """Stop the workers serving ``model`` (a base id, an adapter id of it, or its path;
        None: all) on ``backend`` (None: any). Blocking."""
        base = parse_id(model)[0] if model else None
        chosen = [w for w in self._alive()
                  if (model is None or model in (w.model, w.model_path) or base == w.model
                      or model in w.adapters) and backend in (None, w.backend)]
        return self._unload(chosen, reason)

    def _unload(self, workers: list[InferenceWorker], reason: str) -> list[dict[str, str]]:
        with self._lock:
            for w in workers:
                key = (w.backend, w.model_path)
                if self.workers.get(key) is w:
                    del self.workers[key]
        for w in workers:
            w.stop(reason)
            log.info("inference worker %s: %s unloaded (%s)", w.pid, w.model, reason)
            self.last_unload = {"model": w.model, "backend": w.backend, "reason": reason,
                                "at": _iso(time.time())}
        return [{"model": w.model, "backend": w.backend} for w in workers]

    def reap_idle(self, now: float | None = None) -> list[dict[str, str]]:
        now = time.time() if now is None else now
        idle_s = self.settings.inference_idle_s
        idle = [w for w in self._alive() if w.loaded_at is not None and not w.busy
                and not w.waiting and now - w.last_used_at >= idle_s]
        return self._unload(idle, f"idle for {idle_s:g} s") if idle else []

    async def run_reaper(self) -> None:
        """Unload idle models, checking a few times per idle timeout (at most every 5 s)."""
        period = max(0.05, min(5.0, self.settings.inference_idle_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(self.reap_idle)
            except Exception:
                log.exception("idle unload failed")

    def stop_all(self, reason: str = "the server stopped") -> None:
        self._unload(self._alive(), reason)
        set_reclaimable(None)

    def snapshot(self) -> dict[str, Any]:
        """GET /api/inference."""
        workers = []
        for w in self._alive():
            row = w.snapshot()
            if row["memory_bytes"] is None:
                row["memory_bytes"] = w.rss_bytes()
            workers.append(row)
        return {"idle_timeout_s": float(self.settings.inference_idle_s), "workers": workers,
                "last_unload": self.last_unload}
