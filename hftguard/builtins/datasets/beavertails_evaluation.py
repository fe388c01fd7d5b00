"""``beavertails-evaluation``: the 700 BeaverTails-Evaluation prompts, Antibody's HS set.

``PKU-Alignment/BeaverTails-Evaluation`` (hub split ``test``) holds 700 prompts written for safety
evaluation, 50 for each of the 14 harm categories; fields ``prompt``, ``category`` and
``category_id`` (dataset card). Antibody evaluates on ``beavertails_evaluation.json``, shipped with
its code, which by its size and category round-robin is very likely the same set
(docs/datasets.md); pass that file as ``source`` to use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._papers import (
    BEAVERTAILS_LICENSE,
    SOURCE_HELP,
    HubSourced,
    category_text,
)
from hftguard.builtins.datasets._text import check_split
from hftguard.components import Dataset
from hftguard.data.hub import text_field
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "PKU-Alignment/BeaverTails-Evaluation"
HUB_SPLIT = "test"
SCHEMA = ("prompt", "category", "category_id")
#: File names tried in a local directory before the generic ones (Antibody's file name; the hub
#: repository keeps its data under v1/).
LOCAL_NAMES = (
    "beavertails_evaluation.json",
    "v1/test.jsonl.xz",
    "v1/test.jsonl.gz",
    "v1/test.jsonl",
    "v1/*.jsonl.xz",
    "v1/*.jsonl",
)


@dataclass
class BeaverTailsEvaluationConfig:
    """Options of ``beavertails-evaluation``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})


class BeaverTailsEvaluation(HubSourced, Dataset):
    """BeaverTails-Evaluation: 700 harmful prompts, 50 per harm category (Antibody's HS set).

    Prompt-only examples of kind ``harmful`` in file order. ``meta``: ``id``
    (``beavertails-evaluation:<record index>``), ``category`` and, when present,
    ``category_id``, and ``source``.
    """

    name = "beavertails-evaluation"
    version = "1"
    role = "harmful-eval"
    splits = ("test",)
    source = "PKU-Alignment/BeaverTails-Evaluation (700 prompts, 14 categories x 50)"
    paper = "Antibody (arXiv 2603.00498): Harmful Score prompts; docs/datasets.md"
    license_note = BEAVERTAILS_LICENSE
    Config = BeaverTailsEvaluationConfig

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        out = []
        for record in self.read(HUB_SPLIT, LOCAL_NAMES):
            meta = {
                "source": record.origin,
                "id": f"{self.name}:{record.index}",
                "category": category_text(record.get("category")),
            }
            if record.get("category_id") is not None:
                meta["category_id"] = record["category_id"]
            prompt = text_field(record, "prompt", self.name, SCHEMA)
            out.append(Example(prompt, "", "harmful", meta=meta))
        return out
