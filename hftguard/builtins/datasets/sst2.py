"""``sst2``: GLUE SST-2 sentiment classification, the papers' default benign task.

Hub ``stanfordnlp/sst2`` (fields ``idx``, ``sentence``, ``label`` with 1 = positive, 0 = negative;
splits ``train`` 67,349, ``validation`` 872, ``test`` without labels). ``glue``/``sst2`` holds the
same data with the same field names. Our ``test`` is the ``validation`` split (872 items; the
papers evaluate on it since the hub test split is unlabelled). Alpaca format with the papers'
instruction; the answer is ``positive`` or ``negative`` (docs/datasets.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._papers import (
    MAX_NEW_TOKENS_HELP,
    SOURCE_HELP,
    HubSourced,
    check_positive,
)
from hftguard.builtins.datasets._text import (
    check_match_mode,
    check_split,
    score_labels,
)
from hftguard.builtins.datasets.sentiment import INSTRUCTION
from hftguard.components import TaskDataset
from hftguard.data.hub import int_field, text_field
from hftguard.errors import DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "stanfordnlp/sst2"
HUB_SPLITS = {"train": "train", "test": "validation"}
SCHEMA = ("idx", "sentence", "label")
LABELS = {0: "negative", 1: "positive"}


@dataclass
class SST2Config:
    """Options of ``sst2``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    match: str = field(
        default="exact",
        metadata={
            "help": "'exact' (Booster/Antibody rule): the output, stripped, lower-cased and "
            "without trailing punctuation, equals the label word; 'contains' (Vaccine rule): "
            "the label word occurs in the output, case-insensitively."
        },
    )
    max_new_tokens: int = field(default=200, metadata={"help": MAX_NEW_TOKENS_HELP})


class SST2(HubSourced, TaskDataset):
    """GLUE SST-2 sentiment (train 67,349; test = the 872-item validation split).

    Instruction "Analyze the sentiment of the input, and respond only positive or negative", the
    sentence as input, answer ``positive``/``negative``. Scored exactly (Booster/Antibody) or by
    containment (Vaccine, ``match = "contains"``).
    """

    name = "sst2"
    version = "1"
    splits = ("train", "test")
    source = "GLUE SST-2 (stanfordnlp/sst2); test = the validation split"
    paper = "Vaccine, Lisa, Booster, Antibody: default benign task; docs/datasets.md"
    max_new_tokens = 200
    Config = SST2Config

    def __init__(self, config: SST2Config | None = None) -> None:
        super().__init__(config)
        check_match_mode(self.name, self.config.match)
        check_positive(self.name, "max_new_tokens", self.config.max_new_tokens)
        self.max_new_tokens = self.config.max_new_tokens

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        hub_split = HUB_SPLITS[split]
        out = []
        for record in self.read(hub_split):
            label = int_field(record, "label", self.name, SCHEMA)
            if label not in LABELS:
                raise DataError(
                    f"{record.where}: label {label} is not 0 or 1",
                    hint="the hub's test split is unlabelled (-1); sst2's test split reads "
                    "the validation file",
                )
            word = LABELS[label]
            idx = record.get("idx", record.index)
            out.append(
                Example(
                    INSTRUCTION,
                    word,
                    "benign",
                    input=text_field(record, "sentence", self.name, SCHEMA),
                    meta={
                        "source": record.origin,
                        "id": f"sst2-{hub_split}:{idx}",
                        "category": word,
                        "label": word,
                    },
                )
            )
        return out

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score_labels(self.name, examples, completions, self.config.match)
