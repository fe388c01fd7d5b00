"""Print a pip constraints file that pins every direct dependency to its lowest allowed version.

The equivalent of ``uv pip install --resolution lowest-direct`` for pip (which, unlike uv, finds
the local CPU build of torch): each ``name>=X`` of ``[project.dependencies]`` (and of the extras
named with ``--extras``) becomes ``name==X``. torch is left out: its lowest release would pull a
CUDA build of several GB, so the lowest-versions job keeps the CPU build 2.13.0
(docs/installation.md). A dependency with no lower bound is an error: the job could not test it.

    python tools/lowest_constraints.py --extras dev,plots > constraints.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

SKIP = {"torch"}
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def lowest_pins(requirements: list[str]) -> list[str]:
    pins = []
    for req in requirements:
        m = _REQ.match(req.split(";")[0])
        if m is None:
            raise SystemExit(f"cannot parse requirement {req!r}")
        name, spec = m.group(1), m.group(3)
        if name.lower() in SKIP or name.lower() == "hftguard":
            continue
        low = re.search(r">=\s*([0-9][^,\s]*)", spec)
        if low is None:
            raise SystemExit(f"{name}: no lower bound (>=) in {req!r}; add one so it can be tested")
        pins.append(f"{name}=={low.group(1)}")
    return pins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--pyproject", default=str(Path(__file__).resolve().parents[1] / "pyproject.toml")
    )
    ap.add_argument("--extras", default="", help="comma-separated optional-dependency groups")
    args = ap.parse_args(argv)
    project = tomllib.loads(Path(args.pyproject).read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in filter(None, args.extras.split(",")):
        reqs += project["optional-dependencies"][extra]
    pins = sorted(set(lowest_pins(reqs)), key=str.lower)
    sys.stdout.write("".join(p + "\n" for p in pins))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
