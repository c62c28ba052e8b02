"""Where a job's model is read from: a folder given by its absolute path, or a hub id looked up
in the Hugging Face cache. Never a path relative to the worker's working directory.

transformers' and mlx-lm's loaders take "a folder, else a hub id" and test the folder first,
relative to the current directory: an id like ``tests/..`` would load whatever folder that
names. So a worker turns a hub id into its snapshot folder here (through huggingface_hub's own
cache lookup) and hands the loaders only absolute folders. The server checks ids with the same
``hub_id_problem`` (contract/model_ref.py) before a job is queued.
"""

from __future__ import annotations

from pathlib import Path

from contract.model_ref import ALLOW_PATTERNS, hub_id_problem, is_folder_path
from workers.runtime import ModelNotFound


def model_source(model_id: str) -> str:
    """The absolute folder to load ``model_id`` from; raises ModelNotFound naming the fix.

    A hub id resolves through the Hugging Face cache; where downloads are allowed
    (HF_HUB_OFFLINE=0: PROSPECT_ALLOW_DOWNLOADS) a missing one is downloaded into it first."""
    value = str(model_id).strip()
    if is_folder_path(value):
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise ModelNotFound(f"no model folder at {value}")
        return str(folder.resolve())
    problem = hub_id_problem(value)
    if problem:
        raise ModelNotFound(f"{value!r} is neither an absolute model folder nor a hub id "
                            f"({problem})")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(value, local_files_only=True, allow_patterns=ALLOW_PATTERNS)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        if constants.HF_HUB_OFFLINE:
            raise ModelNotFound(
                f"{value!r} is not in the local Hugging Face cache (Prospect runs offline): "
                f"run `hf download {value}` first") from exc
    try:
        return snapshot_download(value, allow_patterns=ALLOW_PATTERNS)
    except Exception as exc:  # network, gated repo, no such repo: all "cannot get it"
        raise ModelNotFound(f"{value!r} could not be downloaded: {exc}") from exc
