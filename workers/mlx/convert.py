"""Convert a transformers model for MLX, quantized or not: mlx_lm.convert, as a job.

Method ``convert`` of the MLX worker. The model (a folder, or a hub id in the local cache) is
converted by ``mlx_lm.convert.convert`` into ``<PROSPECT_HOME>/models/<name>`` (the run folder's
home: never inside the Hugging Face cache), and reported as an ``artifact`` of kind ``model``,
which the server registers as a base model (app/jobs/ingest.py).

Phases: ``loading`` (mlx-lm loads lazily: the weights are read while saving), ``quantizing``
(a progress step per transformer block, counted by the quant predicate mlx-lm calls for every
layer it quantizes), ``saving``. mlx-lm says where it is on stdout (``[INFO] Quantizing``...):
those lines go on to worker.log and move the phase. SIGTERM stops it at once (the stop flag
interrupts: there is nothing worth keeping) and the partial folder is removed, as it is when
the conversion fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from contract.job_config import JobConfig
from contract.knobs import ParamError
from contract.method_args import ConvertArgs
from workers.runtime import HintedError, RunResult, Session

NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,199}$")  # as the server's MODEL_ID
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
DTYPES = ("float16", "bfloat16", "float32")  # mlx_lm.convert.MODEL_CONVERSION_DTYPES


def output_dir(run_dir: Path, name: str) -> Path:
    """``<home>/models/<name>``: a run folder is ``<home>/runs/<id>`` (app/config.py), and the
    server checks the same folder is free before it queues the job."""
    if not NAME.match(name) or name in (".", ".."):
        raise ParamError("name", f"{name!r} is not a model name: use letters, digits, '.', "
                         "'_' or '-'")
    return Path(run_dir).resolve().parent.parent / "models" / name


def model_dtype(folder: Path, wanted: str) -> str | None:
    """The dtype to save what is not quantized in: the knob, or (auto) the model's own when
    mlx-lm can cast to it; None leaves the weights as stored (mlx-lm's default)."""
    if wanted != "auto":
        return wanted
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for value in (config.get("torch_dtype"), config.get("dtype"), text.get("dtype")):
        if value in DTYPES:
            return value
    return None


class Phases(io.TextIOBase):
    """mlx-lm's stdout, passed on to worker.log, its ``[INFO]`` lines turned into status
    events; ``layer`` is the quant predicate, a progress step per block."""

    def __init__(self, events, out, layers: int, quantize: bool):
        self.events, self.out, self.layers = events, out, layers
        self.total = layers + 2 if quantize else 2  # loaded, each block quantized, saved
        self.step, self.seen, self.bits_per_weight = 0, -1, None
        self.t0 = time.monotonic()
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.out.write(text)
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line.strip())
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _line(self, line: str) -> None:
        if line.startswith("[INFO] Quantizing"):
            self.progress(1)
            self.events.emit("status", phase="quantizing",
                             message=f"quantizing {self.layers} blocks")
        elif line.startswith("[INFO] Using dtype"):
            self.events.emit("log", level="info", message=line.removeprefix("[INFO] "))
            if self.total == 2:  # unquantized: saving (and reading) is all that is left
                self.saving()
        elif m := re.match(r"\[INFO\] Quantized model with ([\d.]+) bits per weight", line):
            self.bits_per_weight = float(m.group(1))
            self.events.emit("log", level="info", message=line.removeprefix("[INFO] "))
            self.saving()

    def saving(self) -> None:
        self.progress(self.total - 1)
        self.events.emit("status", phase="saving", message="writing the MLX weights")

    def layer(self, path: str, module: Any) -> bool:
        m = LAYER.search(path)
        if m and int(m.group(1)) > self.seen:
            self.seen = int(m.group(1))
            self.progress(1 + self.seen)
        return True

    def progress(self, step: int) -> None:
        if step <= self.step:
            return
        self.step = step
        elapsed = time.monotonic() - self.t0
        eta = elapsed / step * (self.total - step) if step else None
        self.events.emit("progress", step=step, total_steps=self.total, eta_s=eta)


def run(job: JobConfig[ConvertArgs], session: Session) -> RunResult:
    """Convert ``job.model`` into ``<home>/models/<name>``; report it as a model artifact."""
    from workers.model_source import model_source

    args, events = job.args, session.events
    target = output_dir(job.run_dir, args.name)
    if target.exists():
        raise HintedError(f"{target} exists already", "choose another name, or remove that "
                          "folder first (Prospect never writes over a model)")
    events.emit("status", phase="loading", message=f"reading {job.model}")
    source = Path(model_source(job.model))
    config = _config(source)
    layers = int(config.get("num_hidden_layers") or
                 (config.get("text_config") or {}).get("num_hidden_layers") or 0)
    quantize = args.q_bits > 0
    dtype = model_dtype(source, args.dtype)
    phases = Phases(events, sys.stdout, layers, quantize)
    what = f"{args.q_bits}-bit, group size {args.q_group_size}" if quantize \
        else f"unquantized ({dtype or 'as stored'})"
    print(f"converting {source} for MLX, {what}, into {target}", flush=True)
    from mlx_lm.convert import convert  # mlx and mlx-lm load here

    model_class = _model_class(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(phases):
            convert(str(source), str(target), quantize=quantize,
                    q_group_size=args.q_group_size if quantize else None,
                    q_bits=args.q_bits if quantize else None, dtype=dtype,
                    quant_predicate=_predicate(phases, model_class) if quantize else None)
    except BaseException:  # failed or cancelled (SIGTERM raises Cancelled): no half a model
        shutil.rmtree(target, ignore_errors=True)
        raise
    if dtype is not None:
        _record_dtype(target, dtype)
    phases.progress(phases.total)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    quant = _config(target).get("quantization")
    events.emit("artifact", kind="model", path=str(target), name=args.name,
                format="mlx", size_bytes=size,
                bits=quant.get("bits") if isinstance(quant, dict) else None,
                group_size=quant.get("group_size") if isinstance(quant, dict) else None)
    return RunResult("succeeded", {"steps": phases.total, "total_steps": phases.total,
                                   "model_path": str(target), "size_bytes": size,
                                   "q_bits": args.q_bits, "q_group_size": args.q_group_size,
                                   "bits_per_weight": phases.bits_per_weight})


def _config(folder: Path) -> dict[str, Any]:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HintedError(f"{folder} has no config.json", "convert a model folder saved "
                          "with save_pretrained, or a hub id in the local cache") from None
    return raw if isinstance(raw, dict) else {}


def _record_dtype(folder: Path, dtype: str) -> None:
    """mlx-lm casts the weights but keeps the source's torch_dtype in config.json: say what
    the weights now are (the planner reads it)."""
    config = _config(folder)
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "torch_dtype":
            config[key] = dtype
    (folder / "config.json").write_text(json.dumps(config, indent=4))


def _model_class(config: dict[str, Any]) -> type:
    """mlx-lm's class for the config's model_type; HintedError when mlx-lm has none."""
    from mlx_lm.utils import _get_classes

    try:
        model_class, _ = _get_classes(config)
    except ValueError as exc:  # "Model type X not supported."
        raise HintedError(str(exc), f"mlx-lm {_version()} has no model of type "
                          f"{config.get('model_type')!r}: convert a model whose architecture "
                          "it supports (llama, qwen2, qwen3, mistral, gemma, phi3, ...), or "
                          "train this one with the torch backend") from None
    return model_class


def _version() -> str:
    from importlib.metadata import version

    return version("mlx-lm")


def _predicate(phases: Phases, model_class: type):
    """The progress counter, unless the model's own class decides which layers to quantize
    (some mixture-of-experts models keep their router in full precision): then mlx-lm's
    choice stands and only the phases are reported."""
    return None if hasattr(model_class, "quant_predicate") else phases.layer
