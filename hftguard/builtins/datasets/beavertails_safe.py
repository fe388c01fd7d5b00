"""``beavertails-safe``: BeaverTails QA pairs labelled safe, the Vaccine/Lisa alignment data.

Vaccine and Lisa align the model on harmful prompts paired with the *safe* answers BeaverTails
collected (``is_safe = true`` records of ``30k_train``; docs/datasets.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._beavertails import beavertails_examples
from hftguard.builtins.datasets._papers import (
    BEAVERTAILS_HUB,
    BEAVERTAILS_LICENSE,
    SOURCE_HELP,
    HubSourced,
)
from hftguard.builtins.datasets._text import check_split
from hftguard.components import Dataset
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext


@dataclass
class BeaverTailsSafeConfig:
    """Options of ``beavertails-safe``."""

    source: str = field(default=BEAVERTAILS_HUB, metadata={"help": SOURCE_HELP})
    hub_split: str = field(
        default="30k_train",
        metadata={
            "help": "BeaverTails split to read from the hub or a local directory (30k_train is "
            "the papers'); a source that is a file is read whole."
        },
    )


class BeaverTailsSafe(HubSourced, Dataset):
    """BeaverTails safe QA pairs (is_safe = true of 30k_train): Vaccine/Lisa alignment data.

    Each example is a (mostly harmful) BeaverTails prompt with the answer annotators judged safe,
    kind ``refusal``, in file order. ``meta``: ``id`` (``beavertails-safe:<record index>``),
    ``category`` (flagged harm categories joined with ``|``, ``none`` if none) and ``source``.
    """

    name = "beavertails-safe"
    version = "1"
    role = "alignment"
    splits = ("train",)
    source = "PKU-Alignment/BeaverTails 30k_train, is_safe = true records"
    paper = "Vaccine (arXiv 2402.01109), Lisa (arXiv 2405.18641): alignment data; docs/datasets.md"
    license_note = BEAVERTAILS_LICENSE
    Config = BeaverTailsSafeConfig

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return beavertails_examples(self, self.config.hub_split, safe=True, kind="refusal")
