"""Reading dataset files row by row, whatever they hold, without ever raising on their content.

Each reader yields ``(row number, value, problem)``: the parsed row and None, or None and a
sentence saying what is wrong with that row (bad JSON, not UTF-8, a CSV row with more cells
than the header). Row numbers are what a person finds in the file: the line of a JSONL file,
the 1-based element of a JSON list, the data row of a CSV file (the header is not counted) or
of a Parquet file.

JSONL, JSON and CSV are read here with the standard library. Parquet needs pyarrow, which is
too big for the server process: workers/tools/dataset_tool.py turns it into JSONL in a subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.db import ROOT

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
RowItem = tuple[int | None, Any, str | None]  # number None: the whole file
# Cells that may hold a conversation written as JSON text (a CSV cell is always text).
MESSAGE_COLUMNS = ("prompt", "completion", "chosen", "rejected", "messages")
LABELS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
csv.field_size_limit(2**31 - 1)  # a long completion is not an error


class ReadError(ValueError):
    """The file as a whole cannot be read (not a Parquet file, a folder, gone)."""


def suffix_of(name: str) -> str:
    return Path(name).suffix.lower()


def read_rows(path: Path, python: str | None = None) -> Iterator[RowItem]:
    suffix = suffix_of(path.name)
    if suffix == ".csv":
        yield from read_csv(path)
    elif suffix == ".parquet":
        yield from read_parquet([path], python)
    else:
        yield from read_json_or_jsonl(path)


def _not_utf8(exc: UnicodeDecodeError, data: bytes) -> str:
    line = data.count(b"\n", 0, exc.start) + 1
    return (f"line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file "
            "as UTF-8")


def read_json_or_jsonl(path: Path) -> Iterator[RowItem]:
    """A JSON list (the file starts with '['), else one JSON value per line."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        yield from _json_list(path.read_bytes())
        return
    with open(path, "rb") as f:
        # Lines end in \n only: a U+2028 inside a string must not split a row.
        for number, line in enumerate(f, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, (f"not UTF-8 text (byte 0x{line[exc.start]:02x} at "
                                     f"column {exc.start + 1}); save the file as UTF-8")
                continue
            yield number, *_loads(text)


def _loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "JSON nested too deeply to read"


def _json_list(data: bytes) -> Iterator[RowItem]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield None, None, _not_utf8(exc, data)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        yield None, None, (f"the file is not valid JSON: {exc.msg} at line {exc.lineno}, "
                        f"column {exc.colno}")
        return
    except RecursionError:
        yield None, None, "JSON nested too deeply to read"
        return
    if not isinstance(value, list):  # '[' then junk cannot parse to anything else, but check
        yield None, None, "a .json dataset must be a list of row objects"
        return
    for number, item in enumerate(value, start=1):
        yield number, item, None


def csv_cell(column: str, cell: str | None) -> Any:
    """A CSV cell as the JSON value it stands for: labels become booleans, a conversation
    written as JSON becomes a list; everything else stays text."""
    if cell is None:
        return None
    if column == "label":
        return LABELS.get(cell.strip().lower(), cell)
    stripped = cell.strip()
    if column in MESSAGE_COLUMNS and stripped.startswith("[") and stripped.endswith("]"):
        value, problem = _loads(stripped)
        if problem is None and isinstance(value, list):
            return value
    return cell


def read_csv(path: Path) -> Iterator[RowItem]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield None, None, _not_utf8(exc, data)
        return
    if "\x00" in text:
        yield None, None, "the file holds NUL bytes: it is not a CSV text file"
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    number = 0
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            yield None, None, "the CSV file has no header row (e.g. prompt,completion,label)"
            return
        header = [h.strip() for h in header]
        for cells in reader:
            number += 1
            if not cells or not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                yield number, None, (f"{len(cells)} cells but the header names "
                                     f"{len(header)}; quote cells that hold commas")
                continue
            cells += [None] * (len(header) - len(cells))
            yield number, {h: csv_cell(h, c) for h, c in zip(header, cells, strict=True)}, None
    except csv.Error as exc:
        yield number + 1, None, f"not valid CSV ({exc})"


def read_parquet(paths: list[Path], python: str | None = None) -> Iterator[RowItem]:
    """Parquet rows through workers/tools/dataset_tool.py, which writes them as JSONL."""
    with tempfile.TemporaryDirectory(prefix="prospect-parquet-") as tmp:
        out = Path(tmp) / "rows.jsonl"
        cmd = [python or sys.executable, "-m", "workers.tools.dataset_tool", "to-jsonl",
               "--out", str(out), *map(str, paths)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            raise ReadError("reading the Parquet file took over 30 minutes") from None
        if proc.returncode != 0:
            lines = (proc.stdout or proc.stderr or "no output").strip().splitlines()
            try:
                message = json.loads(lines[-1])["error"]
            except (ValueError, KeyError, TypeError, IndexError):
                message = lines[-1][-500:] if lines else "the reader failed"
            raise ReadError(message)
        yield from read_json_or_jsonl(out)
