"""`make run` installs the core dependencies and the torch and mlx extras, not the dev tools:
every library the server imports when it starts must come with the core ones (httpx was once
only in dev, and the server would not have started after a plain install)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

from tests.helpers import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """The distributions these need, transitively (markers of extras left out)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in requires if "extra ==" not in r)
    return seen


# Imported at start only because they are installed here (the dev tools bring them), each
# under a try: httpx's command line (rich, pygments), anyio's sniffio; setuptools' .pth hook;
# the project itself.
IF_PRESENT = {"rich", "pygments", "sniffio", "setuptools", "prospect"}


def test_the_server_imports_only_what_the_core_dependencies_bring():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = _closure({_name(r) for r in project["dependencies"]}) | IF_PRESENT
    out = subprocess.run(
        [sys.executable, "-c", "import sys, json, app.main; print(json.dumps(sorted({"
         "m.split('.')[0] for m in sys.modules})))"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    top = json.loads(out.stdout.strip().splitlines()[-1])
    dists = metadata.packages_distributions()
    missing = sorted({d.lower().replace("_", "-") for m in top for d in dists.get(m, [])}
                     - allowed)
    assert not missing, f"the server imports {missing} at start: add them to the core " \
                        "dependencies in pyproject.toml"
