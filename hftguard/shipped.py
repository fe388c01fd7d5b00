"""The example configs and the documentation that ship inside the package.

In a checkout they are the repository's ``configs/`` and ``docs/`` folders; the package reaches them
through the links ``hftguard/_configs`` and ``hftguard/_docs``, which the wheel build follows, so an
installed wheel carries the same files (``[tool.setuptools.package-data]`` in pyproject.toml). This
is what lets ``hftguard run demo`` and ``hftguard docs datasets`` work for a user who installed the
wheel alone, with no checkout. Imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """The folder of shipped example configs."""
    return _PKG / "_configs"


def docs_dir() -> Path:
    """The folder of shipped documentation pages (Markdown)."""
    return _PKG / "_docs"


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # the file name without .toml: what `hftguard run NAME` accepts
    path: Path
    summary: str  # the first comment line(s) of the file


def _summary(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if not body:
            break
        lines.append(body)
    text = " ".join(lines)
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]  # the first sentence
    return first if len(first) <= 100 else first[:99].rstrip() + "…"


def configs() -> list[ShippedConfig]:
    """Every shipped example config, by name."""
    d = configs_dir()
    if not d.is_dir():
        return []
    return [
        ShippedConfig(p.stem, p, _summary(p.read_text(encoding="utf-8")))
        for p in sorted(d.glob("*.toml"))
    ]


def config_path(name: str) -> Path | None:
    """The shipped config called ``name`` (``demo`` or ``demo.toml``), or None."""
    stem = name[: -len(".toml")] if name.endswith(".toml") else name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stem):
        return None  # a path, not a name
    p = configs_dir() / f"{stem}.toml"
    return p if p.is_file() else None


def doc_topics() -> list[str]:
    """Every shipped docs page as a topic name: ``datasets``, ``components/booster``, ..."""
    d = docs_dir()
    if not d.is_dir():
        return []
    pages = [*d.glob("*.md"), *d.glob("components/*.md"), *d.glob("plugins/*.md")]
    return sorted(p.relative_to(d).with_suffix("").as_posix() for p in pages)


def doc_path(topic: str) -> Path | None:
    """The page for ``topic`` (``datasets``, ``datasets.md``, ``docs/datasets.md``), or None."""
    t = topic.strip().removeprefix("docs/").removesuffix(".md")
    if t not in doc_topics():
        return None
    return docs_dir() / f"{t}.md"


def docs_ref(topic: str) -> str:
    """How a hint points at a page, for a checkout and a wheel user alike."""
    return f"docs/{topic}.md, or `hftguard docs {topic}`"
