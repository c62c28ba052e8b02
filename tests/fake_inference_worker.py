"""A stand-in inference worker for the server's tests: speaks contract/inference.py, loads
nothing, answers with deterministic tokens.

Invoked as `fake_inference_worker.py -m workers.<backend>.serve --model PATH` (the manager's
command with PROSPECT_INFERENCE_WORKER_CMD pointing here). The answer is ``<tag>:`` then the
words of the last user message, one token each, where tag is ``base`` or the adapter
folder's parent name (the run folder): so a test tells base from adapter. Then it stops
("stop"), unless max_tokens comes first ("length").

What it does is steered by the model path and the prompt:
- a model folder named ``broken*`` fails to load (an error with id null, exit 1);
- ``CRASH`` in the last user message: exits (code 3) after two tokens, a traceback on stderr;
- ``LONG``: tokens ``t0 t1 …`` until max_tokens or a cancel; ``SLOW``: 0.1 s per token;
- the prompt's token count is its words; over FAKE_INFERENCE_CONTEXT (64) it is a 422.
Environment: FAKE_INFERENCE_MEMORY (bytes reported, default 50 MB), FAKE_INFERENCE_LOAD_S
(seconds to "load"), FAKE_INFERENCE_TOKEN_S (seconds per token).
"""

import os
import queue
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contract.inference import decode, encode, error_reply  # noqa: E402

argv = sys.argv[1:]
backend = argv[argv.index("-m") + 1].split(".")[1] if "-m" in argv else "torch"
model = argv[argv.index("--model") + 1]
memory = int(os.environ.get("FAKE_INFERENCE_MEMORY", 50_000_000))
context = int(os.environ.get("FAKE_INFERENCE_CONTEXT", 64))
token_s = float(os.environ.get("FAKE_INFERENCE_TOKEN_S", 0))
out_lock = threading.Lock()


def send(message: dict) -> None:
    with out_lock:
        sys.stdout.buffer.write(encode(message))
        sys.stdout.buffer.flush()


t0 = time.monotonic()
print(f"fake inference worker: {backend} {model} (pid {os.getpid()})", file=sys.stderr,
      flush=True)
time.sleep(float(os.environ.get("FAKE_INFERENCE_LOAD_S", 0)))
if Path(model).name.startswith("broken"):
    send(error_reply(None, f"could not load {model}: no weights", "check the folder",
                     status=500, error_type="load"))
    sys.exit(1)
send({"type": "ready", "backend": backend, "model": model, "device": "cpu",
      "dtype": "float32", "context_length": context, "memory_bytes": memory,
      "load_s": round(time.monotonic() - t0, 3)})

requests: queue.Queue = queue.Queue()
cancelled: set[str] = set()


def read_stdin() -> None:
    for line in sys.stdin.buffer:
        msg = decode(line)
        if msg.get("op") == "cancel":
            cancelled.add(msg["id"])
        elif msg.get("op") == "shutdown":
            break
        else:
            requests.put(msg)
    os._exit(0)  # stdin closed or shutdown: the server is done with us


threading.Thread(target=read_stdin, daemon=True).start()


def generate(req: dict) -> None:
    rid, msgs = req["id"], req["messages"]
    prompt_tokens = sum(len(m["content"].split()) + 1 for m in msgs)
    if prompt_tokens > context:
        send(error_reply(rid, f"the prompt has {prompt_tokens} tokens; this model's context "
                         f"is {context}", "shorten the conversation", status=422,
                         error_type="context_length"))
        return
    last = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
    tag = Path(req["adapter"]).parent.name if req.get("adapter") else "base"
    if "LONG" in last:
        words = (f"t{i}" for i in range(10**9))
    else:
        words = iter([f"{tag}:", *last.split()])
    delay = 0.1 if "SLOW" in last else token_s
    max_tokens = min(req["max_tokens"], context - prompt_tokens)
    send({"type": "start", "id": rid, "prompt_tokens": prompt_tokens})
    start, first, text, n, reason = time.monotonic(), None, "", 0, "stop"
    for i, word in enumerate(words):
        if rid in cancelled:
            reason = "cancelled"
            break
        if n >= max_tokens:
            reason = "length"
            break
        if "CRASH" in last and i == 2:
            print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr,
                  flush=True)
            os._exit(3)
        time.sleep(delay)
        piece = word if n == 0 else " " + word
        stop_at = [(text + piece).find(s) for s in req.get("stop") or []]
        stop_at = [p for p in stop_at if p >= 0]
        n += 1
        first = first or time.monotonic()
        if stop_at:
            cut = (text + piece)[:min(stop_at)]
            if len(cut) > len(text):
                send({"type": "token", "id": rid, "text": cut[len(text):], "ids": [n]})
            break
        text += piece
        send({"type": "token", "id": rid, "text": piece, "ids": [n]})
    seconds = time.monotonic() - start
    send({"type": "done", "id": rid, "finish_reason": reason, "prompt_tokens": prompt_tokens,
          "completion_tokens": n, "ttft_s": round((first or time.monotonic()) - start, 4),
          "tokens_per_s": round(n / seconds, 2) if seconds > 0 else 0.0,
          "seconds": round(seconds, 4), "memory_bytes": memory})


while True:
    generate(requests.get())
