"""The torch worker: TRL KTO with LoRA.

Run ``python -m workers.torch --config <run_dir>/config.json``.

Importing this package loads nothing heavy; torch is imported by ``kto`` only, after
``__main__`` has set the environment torch reads at import time.
"""
