"""The MLX worker: LoRA SFT with mlx-lm's tuner, and KTO in MLX.

Run ``python -m workers.mlx --config <run_dir>/config.json``.

Importing this package loads nothing heavy: mlx and mlx-lm are imported by ``sft`` and ``kto``
only, so the server may import ``workers.mlx.data`` to check a dataset.
"""
