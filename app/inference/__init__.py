"""Inference: one worker process per loaded base model, serving the playground and /v1.

``catalog`` names the models (``<base>``, ``<base>@job-<N>``), ``worker`` is one worker
process and its pipes, ``manager`` starts, shares, unloads and accounts for them, and
``openai_shapes`` is the OpenAI wire format. The protocol is contract/inference.py.
"""
