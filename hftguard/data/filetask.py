"""Your own task for Finetune Accuracy: a local data file or a hub dataset, scored with a chosen
rule.

``eval --task my.jsonl`` (or ``tasks = ["my.jsonl"]``, or a grid's ``task`` axis) measures FA on a
file instead of a built-in task. Each record needs a prompt (``prompt``/``instruction``/
``question``/``goal``, optionally an ``input``) and a gold answer: its ``label`` if it has one,
else its ``response``/``output``/``answer``. A file has no splits: ``eval`` scores the whole file
(the first ``task_samples`` records) and ``attack-finetune`` trains on the whole file, so give the
two stages different files (``finetune.task = "train.jsonl"``, ``eval.tasks = ["test.jsonl"]``).
A hub dataset ``hf:ID[:CONFIG][:SPLIT]`` (``eval --task hf:org/qa:test``; without a split eval
reads ``test``) is read through :func:`hftguard.data.hub.load_hub_spec` and scored the same way;
``eval.data_fields`` keyed by the task argument maps its columns.

Scoring rules (``eval.task_scoring``, one for all file tasks; default ``contains``):

- ``exact``: the output equals the gold answer after normalisation (lower case, whitespace
  collapsed, surrounding punctuation and quotes removed).
- ``contains``: the normalised gold answer occurs in the normalised output.
- ``number``: the output's number (the one after "The final answer is:", else the last one)
  equals the gold number (the GSM8K rule of the ``arithmetic``/``gsm8k`` tasks).
- ``label``: the label of ``eval.task_labels`` (default: the file's distinct gold answers) that
  occurs first in the output, as a whole word, equals the gold answer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

SCORING_RULES = ("exact", "contains", "number", "label")
DEFAULT_SCORING = "contains"
_EDGES = string.punctuation + string.whitespace + "\u201c\u201d\u2018\u2019"


def check_scoring(rule: str, key: str = "task_scoring") -> None:
    """A :class:`ConfigError` (exit 2) for an unknown scoring rule."""
    if rule not in SCORING_RULES:
        raise ConfigError(
            f"{key} = {rule!r} is not a scoring rule.",
            hint=f"Use one of: {', '.join(SCORING_RULES)}.",
        )


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation and quotes removed."""
    return " ".join(text.lower().split()).strip(_EDGES)


def gold(example: Example) -> str:
    """The gold answer of a file-task example: its label, else its response."""
    return str(example.meta.get("label") or example.response)


def first_label(output: str, labels: Sequence[str]) -> str | None:
    """The label occurring first in ``output`` (whole word, case-insensitive); the longer label
    wins a tie (``"very positive"`` before ``"positive"``); None if none occurs."""
    text = output.lower()
    best: tuple[int, int, str] | None = None
    for label in labels:
        word = label.strip().lower()
        if not word:
            continue
        found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text)
        if found is not None:
            key = (found.start(), -len(word), label)
            best = key if best is None or key < best else best
    return None if best is None else best[2]


def score(
    rule: str, examples: Sequence[Example], completions: Sequence[str], labels: Sequence[str] = ()
) -> list[bool]:
    """Per example, whether the completion is correct under ``rule``."""
    from hftguard.builtins.datasets.arithmetic import extract_answer

    check_scoring(rule)
    if len(examples) != len(completions):
        raise ValueError(f"got {len(examples)} examples but {len(completions)} completions")
    golds = [gold(e) for e in examples]
    if rule == "label":
        labels = list(labels) or list(dict.fromkeys(g.strip() for g in golds))
    out = []
    for truth, output in zip(golds, completions, strict=True):
        if rule == "exact":
            ok = normalise(output) == normalise(truth)
        elif rule == "contains":
            ok = bool(normalise(truth)) and normalise(truth) in normalise(output)
        elif rule == "number":
            want, got = extract_answer(truth), extract_answer(output)
            ok = want is not None and got is not None and abs(want - got) < 1e-6
        else:
            picked = first_label(output, labels)
            ok = picked is not None and normalise(picked) == normalise(truth)
        out.append(ok)
    return out


class FileTask:
    """A task read from a local file or a hub dataset (``hf:ID[:CONFIG][:SPLIT]``, the
    ``test`` split unless the spec names one); quacks like a
    :class:`~hftguard.components.TaskDataset`."""

    splits = ("train", "test")

    def __init__(
        self,
        path: str,
        scoring: str = DEFAULT_SCORING,
        labels: Sequence[str] = (),
        budget: int = 32,
        fields: dict[str, Any] | None = None,
    ) -> None:
        from hftguard.data.hub import is_hf_spec

        check_scoring(scoring)
        self.name = path
        self.scoring = scoring
        self.labels = list(labels)
        self.max_new_tokens = budget
        self.fields = fields  # the task's data_fields entry (hftguard.data.inputs.fields_for)
        source = {"dataset": path} if is_hf_spec(path) else {"file": path}
        self.config = {**source, "scoring": scoring, "labels": self.labels}
        if fields:
            self.config["data_fields"] = fields.get("_value", fields)
        self.hub: list[dict[str, Any]] = []  # hub provenance of the last load

    def load(self, split: str, ctx: Any = None) -> list[Example]:
        """The whole file (a file has no splits) or the hub dataset's split (``split`` unless the
        spec names one); every record needs a gold answer."""
        from hftguard.data.inputs import hub_sources, load_data

        examples = load_data(
            self.name, split, kind="benign", fields=self.fields, require_response=False
        )
        self.hub = hub_sources(examples)
        for i, ex in enumerate(examples, start=1):
            if not gold(ex).strip():
                raise DataError(
                    f"{self.name}: record {i} has no gold answer to score against",
                    hint="give every record a 'label' or an 'answer'/'output'/'response' field",
                )
        return examples

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score(self.scoring, examples, completions, self.labels)

    def record(self) -> dict[str, Any]:
        """What the manifest records of the task (its place among the components' records)."""
        return {
            "name": self.name,
            "kind": "file-task",
            **self.config,
            **({"hf": self.hub} if self.hub else {}),
        }
