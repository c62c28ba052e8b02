"""The hub worker: downloads a model from the Hugging Face hub into the local cache (issue 15).
Plain Python and huggingface_hub: no torch, no mlx."""
