"""``agnews``: AG News four-way topic classification, one of the papers' benign tasks.

Hub ``fancyzhx/ag_news`` (formerly ``ag_news``; fields ``text`` and ``label`` 0-3 = World, Sports,
Business, Sci/Tech; splits ``train`` 120,000 and ``test`` 7,600). Alpaca format with the papers'
instruction; the answer is the label name (docs/datasets.md).
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
from hftguard.builtins.datasets._text import check_match_mode, check_split, score_labels
from hftguard.builtins.datasets.topic import ALIASES, INSTRUCTION, LABELS
from hftguard.components import TaskDataset
from hftguard.data.hub import int_field, text_field
from hftguard.errors import DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "fancyzhx/ag_news"
SCHEMA = ("text", "label")


@dataclass
class AGNewsConfig:
    """Options of ``agnews``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    match: str = field(
        default="exact",
        metadata={
            "help": "'exact' (Booster/Antibody rule): the output equals the label name; "
            "'contains' (Vaccine rule): the label name, or 'sci' for Sci/Tech, occurs in the "
            "output, case-insensitively."
        },
    )
    max_new_tokens: int = field(default=200, metadata={"help": MAX_NEW_TOKENS_HELP})


class AGNews(HubSourced, TaskDataset):
    """AG News topic classification (train 120,000; test 7,600): World/Sports/Business/Sci/Tech.

    The papers' categorisation instruction, the article text as input, the label name as answer.
    Scored exactly (Booster/Antibody) or by containment with Vaccine's aliases.
    """

    name = "agnews"
    version = "1"
    splits = ("train", "test")
    source = "AG News (fancyzhx/ag_news, formerly ag_news)"
    paper = "Vaccine, Lisa, Booster, Antibody: benign task; docs/datasets.md"
    license_note = (
        "AG's news corpus is provided by its authors for research use and the hub card states no "
        "licence: check the terms before any commercial use"
    )
    max_new_tokens = 200
    Config = AGNewsConfig

    def __init__(self, config: AGNewsConfig | None = None) -> None:
        super().__init__(config)
        check_match_mode(self.name, self.config.match)
        check_positive(self.name, "max_new_tokens", self.config.max_new_tokens)
        self.max_new_tokens = self.config.max_new_tokens

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        out = []
        for record in self.read(split):
            label = int_field(record, "label", self.name, SCHEMA)
            if not 0 <= label < len(LABELS):
                raise DataError(
                    f"{record.where}: label {label} is not one of 0-3",
                    hint="AG News labels: 0 World, 1 Sports, 2 Business, 3 Sci/Tech",
                )
            name = LABELS[label]
            out.append(
                Example(
                    INSTRUCTION,
                    name,
                    "benign",
                    input=text_field(record, "text", self.name, SCHEMA),
                    meta={
                        "source": record.origin,
                        "id": f"agnews-{split}:{record.index}",
                        "category": name,
                        "label": name,
                    },
                )
            )
        return out

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score_labels(self.name, examples, completions, self.config.match, ALIASES)
