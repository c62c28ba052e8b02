"""The MLX worker: LoRA SFT with mlx-lm's tuner, KTO in MLX, and fusing an adapter.

Run ``python -m workers.mlx --config <run_dir>/config.json``.

Importing this package loads nothing heavy: mlx and mlx-lm are imported by ``sft``, ``kto``
and ``fuse`` only, after ``__main__`` has set the environment they read at import time.
"""
