"""Generation through Prospect against the bare library, same model, prompt and settings.

    python bench/generate.py [--backend torch|mlx|both] [--model DIR] [--tokens 256] [--repeat 3]

Prospect's side is measured at the client: a real `prospect serve`, its inference worker, the
OpenAI-compatible stream (`POST /v1/chat/completions`, stream=true), read line by line. The
bare side is transformers `generate` with a streamer (torch) or `mlx_lm.stream_generate` (MLX)
in this process. Both answer the same chat-templated prompt greedily; tokens/s counts the
answer's tokens over the time from the request to the last token (what a person waits;
with a random model many tokens decode to no text, so the time between text chunks is
printed too but not the ratio), time to first token is its own line, and the worker's
start-up (model load) is the first request's extra time.
Without --model a randomly initialised Qwen2-0.5B-shaped model is built offline
(bench/synthetic.py). The last line is the ratio Prospect ÷ bare (target ≥ 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Server, init_home  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def decode_rate(stamps: list[float]) -> float:
    """Tokens per second after the first token (stamps: when each token arrived)."""
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def through_prospect(server: Server, model: str, backend: str, tokens: int) -> dict:
    body = {"model": model, "backend": backend, "messages": MESSAGES, "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(server.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    stamps, usage, text, worker = [], None, [], {}
    try:
        resp = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"Prospect answered {exc.code}: {exc.read().decode()}") from None
    with resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise SystemExit(f"Prospect answered an error: {chunk['error']}")
            usage = chunk.get("usage") or usage
            worker = chunk.get("prospect") or worker
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    # A chunk may carry several tokens: spread the count over the chunks' times.
    n = (usage or {}).get("completion_tokens", len(stamps))
    end = time.perf_counter()
    return {"ttft_s": stamps[0] - t0 if stamps else float("nan"), "tokens": n,
            "e2e_tokens_per_s": n / (end - t0),
            "tokens_per_s": decode_rate(stamps) * (n - 1) / max(len(stamps) - 1, 1),
            "seconds": time.perf_counter() - t0, "text": "".join(text),
            "worker_tokens_per_s": worker.get("tokens_per_s", float("nan")),
            "worker_ttft_s": worker.get("ttft_s", float("nan"))}


def bare_torch(model_dir: str, dtype: str, device: str, tokens: int, repeat: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.to(device).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"].to(device)

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t, self.first = [], True

        def put(self, value):
            if self.first:  # generate() puts the prompt first
                self.first = False
                return
            self.t.append(time.perf_counter())

        def end(self):
            pass

    out = []
    with torch.inference_mode():  # warm-up, as Prospect's first (1-token) answer is
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                       do_sample=False)
    for _ in range(repeat):
        s = Stamps()
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=tokens, do_sample=False, streamer=s)
        end = time.perf_counter()
        text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        out.append({"ttft_s": s.t[0] - t0, "tokens": len(s.t), "tokens_per_s": decode_rate(s.t),
                    "e2e_tokens_per_s": len(s.t) / (end - t0), "text": text})
    return out


def bare_mlx(model_dir: str, tokens: int, repeat: int) -> list[dict]:
    from mlx_lm import load, stream_generate

    model, tok = load(model_dir)
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    for _r in stream_generate(model, tok, prompt, max_tokens=2):  # warm-up, as Prospect's
        pass
    out = []
    for _ in range(repeat):
        t0, stamps, text = time.perf_counter(), [], []
        for r in stream_generate(model, tok, prompt, max_tokens=tokens):
            stamps.append(time.perf_counter())
            text.append(r.text)
        out.append({"ttft_s": stamps[0] - t0, "tokens": len(stamps),
                    "tokens_per_s": decode_rate(stamps),
                    "e2e_tokens_per_s": len(stamps) / (time.perf_counter() - t0),
                    "text": "".join(text)})
    return out


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def run_backend(backend: str, model: str, home: Path, tokens: int, repeat: int) -> float:
    with Server(home) as server:
        t0 = time.perf_counter()
        through_prospect(server, model, backend, 1)  # starts the worker: the model loads
        startup = time.perf_counter() - t0
        ours = [through_prospect(server, model, backend, tokens) for _ in range(repeat)]
        state = server.call("/api/inference")
        worker = next(w for w in state["workers"] if w["backend"] == backend)
        rss = psutil.Process(server.proc.pid).memory_info().rss
        server.call("/api/inference/unload", {"model": None, "backend": None})
    if backend == "torch":
        bare = bare_torch(model, worker["dtype"], worker["device"], tokens, repeat)
    else:
        bare = bare_mlx(model, tokens, repeat)
    p, b = median(ours, "e2e_tokens_per_s"), median(bare, "e2e_tokens_per_s")
    print(f"{backend}: device {worker['device']}, dtype {worker['dtype']}, worker start-up "
          f"(first answer, model load) {startup:.2f} s, worker memory "
          f"{worker['memory_bytes'] / 2**20:.0f} MiB, server RSS {rss / 2**20:.0f} MiB")
    same = ours[-1]["text"] == bare[-1]["text"]
    print(f"{backend}: tokens {median(ours, 'tokens'):.0f} (Prospect) / "
          f"{median(bare, 'tokens'):.0f} (bare); same greedy text: {same}")
    print(f"{backend}: time to first token {median(ours, 'ttft_s') * 1000:.0f} ms (Prospect, at "
          f"the client) / {median(bare, 'ttft_s') * 1000:.0f} ms (bare)")
    print(f"{backend}: inside the worker: time to first token "
          f"{median(ours, 'worker_ttft_s') * 1000:.0f} ms, tokens/s "
          f"{median(ours, 'worker_tokens_per_s'):.1f}")
    print(f"{backend}: decode tokens/s between the first and last text chunk "
          f"{median(ours, 'tokens_per_s'):.1f} (Prospect) / {median(bare, 'tokens_per_s'):.1f} "
          "(bare)")
    print(f"{backend}: tokens/s, request to last token {p:.1f} (Prospect, at the client) / "
          f"{b:.1f} (bare) = {p / b:.3f}", flush=True)
    return p / b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="both", choices=["torch", "mlx", "both"])
    ap.add_argument("--model", help="a model folder Prospect may read (in your home), or "
                    "tiny-demo (default: a synthetic Qwen2-0.5B shape)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    backends = ["torch", "mlx"] if a.backend == "both" else [a.backend]
    with tempfile.TemporaryDirectory(prefix="prospect-gen-bench-") as tmp:
        home = Path(tmp) / "home"
        demo = init_home(home)
        model = demo["model"] if a.model == "tiny-demo" else a.model
        if not model:  # inside the Prospect home: a folder Prospect may read
            from bench.synthetic import build

            build(home / "models" / "synthetic", "qwen2-0.5b", rows=1, tokens=16)
            model = str(home / "models" / "synthetic" / "model")
        print(f"model {model}; {a.tokens}-token greedy answers, median of {a.repeat}", flush=True)
        ratios = {b: run_backend(b, model, home, a.tokens, a.repeat) for b in backends}
    print("ratio Prospect/bare tokens/s: " + ", ".join(f"{b} {r:.3f}" for b, r in ratios.items()))


if __name__ == "__main__":
    main()
