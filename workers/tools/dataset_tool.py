"""Dataset work that needs a library the server must not load: run as a subprocess.

    python -m workers.tools.dataset_tool to-jsonl --out rows.jsonl a.parquet [b.parquet ...]
        Parquet rows (pyarrow) as one JSON object per line, in file order, so the server
        validates them with its JSONL reader and row numbers stay the Parquet rows.
    python -m workers.tools.dataset_tool tokens --tokenizer DIR --data data.jsonl --kind kto \
            --max-length 512 [--lengths-out lengths.json]
        Token lengths of a normalised dataset with a model's tokenizer.json and its chat
        template (the `tokenizers` library and jinja2, as transformers' apply_chat_template
        renders it), and how many rows the max length would truncate or drop.

Either prints one JSON object on its last stdout line; a failure prints {"error": ...} and
exits 2, so the server can show the message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from contract.rows import PROBLEM_KEY
from contract.token_lengths import common_prefix_length, summarize


def _plain(value: Any, column: str) -> Any:
    """pyarrow's Python values as JSON values: bytes must be UTF-8 text, others as text."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"column {column!r} is not UTF-8 text") from None
    if isinstance(value, dict):
        return {k: _plain(v, column) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, column) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # dates, decimals: shown as text, and a row check will say why


def to_jsonl(paths: list[str], out: str) -> dict:
    import pyarrow.parquet as pq

    rows = 0
    with open(out, "w", encoding="utf-8") as f:
        for path in paths:
            try:
                batches = pq.ParquetFile(path).iter_batches(batch_size=2048)
                for batch in batches:
                    for row in batch.to_pylist():
                        try:
                            row = {k: _plain(v, k) for k, v in row.items()}
                        except ValueError as exc:
                            row = {PROBLEM_KEY: str(exc)}
                        f.write(json.dumps(row) + "\n")  # ASCII escapes: any text survives
                        rows += 1
            except (OSError, ValueError, TypeError) as exc:  # pyarrow's errors derive these
                name = Path(path).name
                raise SystemExit(_fail(f"{name} is not a readable Parquet file ({exc})")) \
                    from None
    return {"rows": rows}


def _fail(message: str) -> int:
    print(json.dumps({"error": message}))
    return 2


# --- token lengths ---------------------------------------------------------------------------
def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatRenderer:
    """A model folder's tokenizer.json and chat template, rendered as transformers does
    (trim_blocks, lstrip_blocks, raise_exception, bos/eos tokens), tokenized without
    special tokens added (the template writes them)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        self.special = {"bos_token": _token_text(config.get("bos_token")) or "",
                        "eos_token": _token_text(config.get("eos_token")) or ""}
        self.template = None
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = self._raise
            self.template = env.from_string(template)

    @staticmethod
    def _raise(message: str):
        raise ValueError(f"the chat template refused a row: {message}")

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self.template is None:  # no template: the seed's plain "User: … Assistant: …"
            text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
            return text + ("\nAssistant: " if add_generation_prompt else "")
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    **self.special)

    def lengths(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def lengths(tokenizer_dir: str, data: str, kind: str) -> dict:
    """Per row: tokens of prompt + completion, and (KTO) of the prompt as TRL splits it."""
    renderer = ChatRenderer(Path(tokenizer_dir))
    # The loaders the workers use: they also read a file registered as it was (the demo's).
    if kind == "kto":
        from contract.rows import load_kto_dataset

        rows = load_kto_dataset(data)
    else:
        from contract.sft_rows import load_sft_rows

        rows = [r if "prompt" not in r else {"messages": [
            {"role": "user", "content": r["prompt"]},
            {"role": "assistant", "content": r["completion"]}]} for r in load_sft_rows(data)[0]]
    totals: list[int] = []
    prompts: list[int] = []
    batch = 512
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        if kind == "kto":
            prompt_ids = renderer.lengths([renderer.render(r["prompt"], True) for r in chunk])
            full_ids = renderer.lengths([renderer.render(r["prompt"] + r["completion"])
                                         for r in chunk])
            for p_ids, f_ids in zip(prompt_ids, full_ids, strict=True):
                # Where TRL's KTOTrainer splits prompt from completion (workers/mlx/data.py).
                prompts.append(common_prefix_length(p_ids, f_ids))
                totals.append(len(f_ids))
        else:
            texts = [r["text"] if "text" in r else renderer.render(r["messages"]) for r in chunk]
            totals.extend(len(ids) for ids in renderer.lengths(texts))
    return {"kind": kind, "template": "chat template" if renderer.template else
            "none (plain User:/Assistant: text)", "total": totals,
            "prompt": prompts if kind == "kto" else []}


def tokens(tokenizer_dir: str, data: str, kind: str, max_length: int) -> dict:
    return summarize(lengths(tokenizer_dir, data, kind), max_length)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tools.dataset_tool")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("paths", nargs="+")
    t = sub.add_parser("tokens")
    t.add_argument("--tokenizer", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--kind", choices=("kto", "sft"), required=True)
    t.add_argument("--max-length", type=int, required=True)
    t.add_argument("--lengths-out", help="also write every row's lengths here (a cache)")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-jsonl":
            result = to_jsonl(args.paths, args.out)
        else:
            found = lengths(args.tokenizer, args.data, args.kind)
            if args.lengths_out:
                partial = Path(args.lengths_out + ".partial")
                partial.write_text(json.dumps(found))
                partial.replace(args.lengths_out)
            result = summarize(found, args.max_length)
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - any failure is a message for the person
        return _fail(f"{type(exc).__name__}: {exc}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
