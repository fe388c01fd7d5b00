"""``safety-refusals``: the provider's alignment data (harmful instruction -> refusal).

An offline stand-in for the BeaverTails/RepNoise refusal records the papers align on, so alignment
defenses can run without downloads. Its prompts are exactly those of ``harmful-compliance`` train,
because Booster and Antibody pair the two sets prompt by prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._harm import refusal_answer, train_prompts
from hftguard.builtins.datasets._text import check_split, copies
from hftguard.components import Dataset
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext


class SafetyRefusals(Dataset):
    """Harmful instructions paired with short refusals (offline alignment set, 660 rows).

    Prompts name a harmful goal from 12 harm categories in 8 phrasings; answers are a refusal plus a
    brief safe redirection suited to the category. Deterministic: the order and content never depend
    on the run seed (the training loop shuffles).
    """

    name = "safety-refusals"
    version = "1"
    role = "alignment"
    splits = ("train",)
    source = "stand-in for BeaverTails prompts with RepNoise-style refusals (written for hftguard)"

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_examples())


@cache
def _examples() -> tuple[Example, ...]:
    rng = random.Random(7101)
    return tuple(
        Example(
            row.prompt,
            refusal_answer(rng, row.category),
            "refusal",
            meta={"source": SafetyRefusals.name, "id": row.id, "category": row.category},
        )
        for row in train_prompts()
    )
