"""Measurement only, for bench/peer_kto.py: put this folder on PYTHONPATH and set
PEER_TRAIN_TIMES to a file; the process that runs ``transformers.Trainer.train`` (LLaMA-Factory's,
bare TRL's or Prospect's worker) appends one JSON line there: the training call's wall seconds,
this process's CPU seconds (all threads), its minor page faults (memory the allocator handed
back to the system and took again) and its global step. The wrapper runs once, around
the whole call, so it adds nothing per step. No effect when PEER_TRAIN_TIMES is unset.
"""

import importlib.abc
import importlib.util
import json
import os
import resource
import sys
import time


class _WrapTrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            train = module.Trainer.train

            def timed(self, *args, **kwargs):
                cpu, wall = time.process_time(), time.perf_counter()
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                try:
                    return train(self, *args, **kwargs)
                finally:
                    line = {"wall_s": time.perf_counter() - wall,
                            "cpu_s": time.process_time() - cpu,
                            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                            - faults,
                            "steps": self.state.global_step}
                    with open(os.environ["PEER_TRAIN_TIMES"], "a") as f:
                        f.write(json.dumps(line) + "\n")

            module.Trainer.train = timed

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PEER_TRAIN_TIMES"):
    sys.meta_path.insert(0, _WrapTrain())
