"""Paper presets: each paper's protocol pinned in one TOML file, with its published numbers.

A preset is a pipeline config (``[align]``, ``[finetune]``, ``[eval]``, ``[dataset_options]``)
plus a ``[preset]`` table (paper, description, notes) and ``[[published]]`` rows (method,
column, HS, FA, source) that ``hftguard report`` puts beside our numbers. Built-in presets live in
``hftguard/presets/*.toml``; ``--preset`` also accepts a path to a TOML file of the same shape.

Precedence: defaults < preset < --config file < command-line options < --set. Nothing here
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard.errors import ConfigError, did_you_mean
from hftguard.options import load_toml, merge

PRESET_DIR = Path(__file__).with_name("presets")
CONFIG_KEYS = ("align", "finetune", "eval", "dataset_options", "evaluate_base", "skip_align")


@dataclass
class Preset:
    name: str
    paper: str
    description: str
    config: dict[str, Any]
    published: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def ref(self) -> str:
        """How configs record the preset: a built-in's name, or the absolute path of a file."""
        if self.path is None or self.path.parent == PRESET_DIR:
            return self.name
        return str(self.path.resolve())

    def stage(self, section: str) -> dict[str, Any]:
        """The preset's options for one stage, with the pipeline-wide dataset options folded in
        (the stage's own entries win), as the stage commands need them."""
        data = dict(self.config.get(section) or {})
        shared = self.config.get("dataset_options") or {}
        if shared:
            data["dataset_options"] = merge(dict(shared), data.get("dataset_options") or {})
        data["preset"] = self.ref
        return data

    def pipeline(self) -> dict[str, Any]:
        return {**self.config, "preset": self.ref}

    def published_table(self) -> dict[tuple[str, str], tuple[float | None, float | None]]:
        """``{(method, column): (HS, FA)}`` for :func:`hftguard.pipeline.report.build`."""
        return {(r["method"], r["column"]): (r.get("hs"), r.get("fa")) for r in self.published}


def names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load(spec: str) -> Preset:
    """A built-in preset by name, or a preset TOML file by path."""
    path = Path(spec)
    if not (spec.endswith(".toml") or path.is_file()):
        path = PRESET_DIR / f"{spec}.toml"
        if not path.is_file():
            raise ConfigError(
                f"Unknown preset '{spec}'." + did_you_mean(spec, names()),
                hint=f"Built-in presets: {', '.join(names())}; or give a preset .toml file.",
            )
    elif not path.is_file():
        raise ConfigError(f"Preset file {spec} does not exist.", hint="Check the path.")
    raw = load_toml(path)
    meta = raw.get("preset")
    if not isinstance(meta, dict):
        raise ConfigError(
            f"{path}: a preset needs a [preset] table (name, paper, description).",
            hint="See docs/presets.md for the format.",
        )
    unknown = sorted(set(raw) - {"preset", "published", *CONFIG_KEYS})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}.",
            hint=f"A preset holds [preset], [[published]] and {', '.join(CONFIG_KEYS)}.",
        )
    published = raw.get("published") or []
    for i, row in enumerate(published, start=1):
        if not isinstance(row, dict) or not {"method", "column"} <= set(row):
            raise ConfigError(
                f"{path}: published row {i} needs 'method' and 'column' (and hs / fa).",
                hint='e.g. [[published]] method = "sft/sft" column = "p=0.1" hs = 52.8 fa = 94.8',
            )
    return Preset(
        name=str(meta.get("name") or path.stem),
        paper=str(meta.get("paper", "")),
        description=str(meta.get("description", "")),
        config={k: raw[k] for k in CONFIG_KEYS if k in raw},
        published=list(published),
        notes=[str(n) for n in meta.get("notes", [])],
        path=path,
    )
