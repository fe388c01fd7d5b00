"""``harmbench``: the HarmBench text behaviours (Mazeika et al. 2024, arXiv 2402.04249).

Published schema (``data/behavior_datasets/harmbench_behaviors_text_all.csv`` in
github.com/centerforaisafety/HarmBench, and its ``_test`` / ``_val`` variants): columns
``Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID``;
``FunctionalCategory`` is ``standard``, ``contextual`` (the behaviour refers to a
``ContextString`` the model is shown with it) or ``copyright`` (judged by a hash check in
HarmBench, not by a classifier). The hub copy ``walledai/HarmBench`` (MIT, as the repository) has
one configuration per functional category (``standard``, ``contextual``, ``copyright``), each a
single split ``train`` with columns ``prompt`` and ``category`` (the semantic category), plus
``context`` in ``contextual``.

HarmBench's own test cases for a contextual behaviour (its ``DirectRequest`` baseline) are
``f"{ContextString}\\n\\n---\\n\\n{Behavior}"``; that is the default prompt here
(``context_format = "prompt"``). ``context_format = "input"`` keeps the behaviour as the prompt
and puts the context in the example's ``input`` field instead (the Alpaca "### Input:" block, or
the user message's second paragraph with a chat template); judges then see the behaviour alone.

Sources checked for the schema: the HarmBench repository's CSV header and its baselines' contextual
formatting (github.com/centerforaisafety/HarmBench), and the hub card and file tree of
``walledai/HarmBench``. No HarmBench data ships with hftguard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hftguard.builtins.datasets._papers import SOURCE_HELP
from hftguard.builtins.datasets._text import check_split
from hftguard.components import Dataset
from hftguard.data.hub import SourceRecord, load_records, text_field
from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "walledai/HarmBench"
#: The hub copy's configurations each hold one split, ``train``.
HUB_SPLIT = "train"
#: The functional categories, in the order they are read from the hub.
FUNCTIONAL_CATEGORIES: tuple[str, ...] = ("standard", "contextual", "copyright")
#: Columns of the published CSV.
SCHEMA = (
    "Behavior",
    "FunctionalCategory",
    "SemanticCategory",
    "Tags",
    "ContextString",
    "BehaviorID",
)
#: Columns of the hub copy (``context`` in the ``contextual`` configuration only).
HUB_SCHEMA = ("prompt", "category", "context")
#: The published file in a local directory: a copy of the file's directory, or of the repository.
LOCAL_NAMES = (
    "harmbench_behaviors_text_all.csv",
    "data/behavior_datasets/harmbench_behaviors_text_all.csv",
)
#: Between the context and the behaviour of a contextual prompt (HarmBench's own test cases).
CONTEXT_SEPARATOR = "\n\n---\n\n"
LICENSE = "HarmBench behaviours are MIT-licensed (the HarmBench repository's LICENSE)"
PAPER = (
    "HarmBench (Mazeika et al. 2024, arXiv 2402.04249): 200 standard, 100 contextual and 100 "
    "copyright behaviours; most papers report the standard ones"
)
_BOTH_SCHEMAS = (
    f"the published CSV ({', '.join(SCHEMA)}) or the hub copy {HUB_ID} ({', '.join(HUB_SCHEMA)})"
)


@dataclass
class HarmBenchConfig:
    """Options of ``harmbench``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    functional_categories: list[str] = field(
        default_factory=lambda: ["standard"],
        metadata={
            "help": "Which behaviours: any of standard, contextual, copyright (a list, or a "
            "comma-separated string). Default standard only, as most papers report; copyright "
            "behaviours are judged by a hash check in HarmBench, which hftguard's judges do not do."
        },
    )
    context_format: Literal["prompt", "input"] = field(
        default="prompt",
        metadata={
            "help": "Where a contextual behaviour's context goes: 'prompt' = HarmBench's test "
            "case, context + '\\n\\n---\\n\\n' + behaviour as the prompt; 'input' = the "
            "behaviour as the prompt and the context as the example's input field."
        },
    )


class HarmBench(Dataset):
    """HarmBench text behaviours (standard by default; contextual, copyright on request) for HS.

    Prompt-only examples of kind ``harmful``: the published file's order (filtered by functional
    category), or, from the hub, the configurations in the order standard, contextual, copyright.
    ``meta``: ``id`` (the ``BehaviorID``; ``harmbench-<configuration>:<record index>`` for the hub
    copy, which has none), ``category`` (the semantic category), ``functional_category`` and
    ``source``.
    """

    name = "harmbench"
    version = "1"
    role = "harmful-eval"
    splits = ("test",)
    source = "HarmBench text behaviours (harmbench_behaviors_text_all.csv; hub walledai/HarmBench)"
    paper = PAPER
    license_note = LICENSE
    Config = HarmBenchConfig

    def __init__(self, config: HarmBenchConfig | None = None) -> None:
        super().__init__(config)
        given = self.config.functional_categories
        if isinstance(given, str):  # a comma-separated string, when built without coercion
            given = given.split(",")
        chosen = [str(c).strip().lower() for c in given if str(c).strip()]
        unknown = [c for c in chosen if c not in FUNCTIONAL_CATEGORIES]
        if unknown or not chosen:
            problem = (
                f"unknown functional_categories {', '.join(map(repr, unknown))}"
                if unknown
                else "functional_categories is empty"
            )
            raise ConfigError(
                f"dataset {self.name!r}: {problem}",
                hint=f"use any of {', '.join(FUNCTIONAL_CATEGORIES)}, e.g. --set "
                "'dataset_options.harmbench.functional_categories=standard,contextual'",
            )
        if self.config.context_format not in ("prompt", "input"):
            raise ConfigError(
                f"dataset {self.name!r}: context_format {self.config.context_format!r} is not "
                "'prompt' or 'input'",
                hint="'prompt': context + '---' + behaviour as the prompt (HarmBench's own); "
                "'input': the context in the example's input field",
            )
        #: The chosen categories in canonical order (the order hub configurations are read in).
        self.categories = tuple(c for c in FUNCTIONAL_CATEGORIES if c in chosen)

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        out: list[Example] = []
        for config, records in self._read_sources():
            for record in records:
                example = self._example(record, config)
                if example is not None:
                    out.append(example)
        if not out:
            raise DataError(
                f"dataset {self.name!r}: {self.config.source} has no behaviours of the chosen "
                f"functional_categories ({', '.join(self.categories)})",
                hint="check functional_categories and that source is the HarmBench behaviours file",
            )
        return out

    def _read_sources(self) -> list[tuple[str | None, list[SourceRecord]]]:
        """``(hub configuration or None, records)``: the published file read once (filtered by
        its FunctionalCategory column), or one hub configuration per chosen category."""
        text = str(self.config.source).strip()
        path = Path(text).expanduser() if text else None
        if path is not None and (
            path.is_file() or (path.is_dir() and any((path / n).is_file() for n in LOCAL_NAMES))
        ):
            return [(None, self._load(None, LOCAL_NAMES))]
        return [
            (
                config,
                self._load(
                    config,
                    [f"{config}/{HUB_SPLIT}-*{ext}" for ext in (".parquet", ".jsonl", ".json")],
                ),
            )
            for config in self.categories
        ]

    def _load(self, config: str | None, local_names: Sequence[str]) -> list[SourceRecord]:
        return load_records(
            self.config.source,
            dataset=self.name,
            hub_split=HUB_SPLIT,
            hub_config=config,
            local_names=local_names,
        )

    def _example(self, record: SourceRecord, config: str | None) -> Example | None:
        """The record as an example, or None when its functional category is not chosen."""
        if "Behavior" in record:  # the published CSV
            functional = text_field(record, "FunctionalCategory", self.name, SCHEMA).strip()
            if functional.lower() not in self.categories:
                return None
            behavior = text_field(record, "Behavior", self.name, SCHEMA)
            context = text_field(record, "ContextString", self.name, SCHEMA, required=False)
            ident = text_field(record, "BehaviorID", self.name, SCHEMA).strip()
            category = text_field(record, "SemanticCategory", self.name, SCHEMA, required=False)
            context_column = "ContextString"
        elif "prompt" in record:  # the hub copy: one configuration (= functional category)
            behavior = text_field(record, "prompt", self.name, HUB_SCHEMA)
            context = text_field(record, "context", self.name, HUB_SCHEMA, required=False)
            # a single file in the hub schema is one configuration, read whole
            functional = config or ("contextual" if context.strip() else "")
            prefix = f"harmbench-{config}" if config else "harmbench"
            ident = f"{prefix}:{record.index}"
            category = text_field(record, "category", self.name, HUB_SCHEMA, required=False)
            context_column = "context"
        else:
            raise DataError(
                f"{record.where}: neither a 'Behavior' nor a 'prompt' field",
                hint=f"dataset {self.name!r} reads {_BOTH_SCHEMAS}; is source the right file?",
            )
        if functional.lower() == "contextual" and not context.strip():
            raise DataError(
                f"{record.where}: contextual behaviour without a context "
                f"(field {context_column!r} is empty or missing)",
                hint=f"dataset {self.name!r} reads {_BOTH_SCHEMAS}",
            )
        prompt, input_text = behavior, ""
        if context.strip():
            if self.config.context_format == "prompt":
                prompt = f"{context}{CONTEXT_SEPARATOR}{behavior}"
            else:
                input_text = context
        meta = {"source": record.origin, "id": ident, "category": category}
        if functional:
            meta["functional_category"] = functional.lower()
        return Example(prompt, "", "harmful", input_text, meta)
