"""What a person or a script may point Prospect at on disk: text a file system can hold, and
absolute paths inside the home folder or PROSPECT_HOME (a local app reads no other files)."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.errors import JobInputError


def allowed_roots(settings: Settings) -> list[Path]:
    return [Path.home().resolve(), settings.home_dir]


def inside_allowed(path: Path, settings: Settings) -> bool:
    return any(path == root or path.is_relative_to(root) for root in allowed_roots(settings))


NAME_MAX = 255  # bytes in one file name (ext4, APFS, NTFS): more fails with ENAMETOOLONG
PATH_MAX = 4096


def check_path_text(value: str, field: str) -> str:
    """The one check every path from a person or a script passes before the file system sees
    it (job model/dataset, fuse adapter_path, dataset register and tokens, artifact ?path=):
    a NUL, text UTF-8 cannot encode, or a name longer than the file system allows would
    raise deep inside os.stat; here it is a 422 naming the field."""
    shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    if "\x00" in value:
        raise JobInputError(field, f"{shown} contains a NUL byte; give a plain path")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise JobInputError(field, f"{shown} contains a lone surrogate (e.g. \\ud800), "
                            "which no file name can hold; give valid Unicode") from None
    if len(encoded) >= PATH_MAX:
        raise JobInputError(field, f"the path is {len(encoded)} bytes long; a path may have "
                            f"at most {PATH_MAX - 1}")
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise JobInputError(field, f"one name in the path is {len(longest)} bytes long; the "
                            f"file system allows at most {NAME_MAX} per file or folder name")
    return value


def local_path(value: str, settings: Settings, field: str) -> Path:
    check_path_text(value, field)
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise JobInputError(field, f"{value!r} is a relative path; give an absolute path")
    try:
        path = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a folder we may not read
        raise JobInputError(field, f"{value!r} cannot be resolved: {exc}") from None
    if not inside_allowed(path, settings):
        roots = " or ".join(str(r) for r in allowed_roots(settings))
        raise JobInputError(field, f"{path} is outside the folders Prospect may read ({roots})")
    return path
