"""``beavertails-test``: the unsafe prompts of BeaverTails ``30k_test``, for the Harmful Score.

Vaccine evaluates on the first 500 unsafe prompts of ``30k_test``, Booster and Lisa on the first
1000 (docs/datasets.md); how many to take is the evaluation's ``harmful_samples``. The split is
fixed to ``30k_test`` (there is no option to change it) so evaluation prompts can never come from a
training split of the hub copy or of a local directory.
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

#: The only split this component reads (held-out prompts).
HUB_SPLIT = "30k_test"


@dataclass
class BeaverTailsTestConfig:
    """Options of ``beavertails-test``."""

    source: str = field(default=BEAVERTAILS_HUB, metadata={"help": SOURCE_HELP})
    dedupe: bool = field(
        default=False,
        metadata={
            "help": "Drop repeated prompts, keeping the first (the papers do not: a prompt "
            "answered several times in 30k_test is evaluated several times)."
        },
    )


class BeaverTailsTest(HubSourced, Dataset):
    """Unsafe prompts of BeaverTails 30k_test, in file order: the Vaccine/Booster/Lisa HS set.

    Examples have the prompt only (the model under test answers, a judge decides), kind
    ``harmful``. ``meta``: ``id`` (``beavertails-test:<record index>``), ``category`` (of the
    unsafe answer the prompt was collected with) and ``source``.
    """

    name = "beavertails-test"
    version = "1"
    role = "harmful-eval"
    splits = ("test",)
    source = "PKU-Alignment/BeaverTails 30k_test, prompts of is_safe = false records"
    paper = (
        "Vaccine (first 500), Booster and Lisa (first 1000): Harmful Score prompts; "
        "docs/datasets.md"
    )
    license_note = BEAVERTAILS_LICENSE
    Config = BeaverTailsTestConfig

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        examples = beavertails_examples(
            self, HUB_SPLIT, safe=False, kind="harmful", with_response=False
        )
        if not self.config.dedupe:
            return examples
        seen: set[str] = set()
        unique = []
        for example in examples:
            if example.prompt not in seen:
                seen.add(example.prompt)
                unique.append(example)
        return unique
