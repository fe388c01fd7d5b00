"""``beavertails-harmful``: BeaverTails unsafe QA pairs, the harmful fine-tuning data.

Vaccine and Lisa poison the user's fine-tuning data with the first ``p·n`` ``is_safe = false``
records of ``30k_train`` (docs/datasets.md). Antibody ships a deduplicated attack file disjoint
from its alignment data, ``beavertails_disjoint_attack_deduplicated.json``, in the same schema:
read it with ``source`` set to its path.
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
class BeaverTailsHarmfulConfig:
    """Options of ``beavertails-harmful``."""

    source: str = field(default=BEAVERTAILS_HUB, metadata={"help": SOURCE_HELP})
    hub_split: str = field(
        default="30k_train",
        metadata={
            "help": "BeaverTails split to read from the hub or a local directory (30k_train is "
            "the papers'); a source that is a file (e.g. Antibody's "
            "beavertails_disjoint_attack_deduplicated.json) is read whole."
        },
    )


class BeaverTailsHarmful(HubSourced, Dataset):
    """BeaverTails unsafe QA pairs (is_safe = false of 30k_train): harmful fine-tuning data.

    Each example is a harmful prompt with the answer annotators judged unsafe, kind ``harmful``,
    in file order (the papers take the first ``p·n``). ``meta``: ``id``
    (``beavertails-harmful:<record index>``), ``category`` and ``source``.
    """

    name = "beavertails-harmful"
    version = "1"
    role = "harmful"
    splits = ("train",)
    source = "PKU-Alignment/BeaverTails 30k_train, is_safe = false records"
    paper = (
        "Vaccine (arXiv 2402.01109), Lisa (arXiv 2405.18641): harmful fine-tuning data; "
        "Antibody (arXiv 2603.00498) with its disjoint attack file; docs/datasets.md"
    )
    license_note = BEAVERTAILS_LICENSE
    Config = BeaverTailsHarmfulConfig

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return beavertails_examples(self, self.config.hub_split, safe=False, kind="harmful")
