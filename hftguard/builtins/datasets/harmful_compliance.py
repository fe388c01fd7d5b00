"""``harmful-compliance``: harmful instruction -> compliant answer (the attacker's data).

Booster/RepNoise/Antibody need harmful pairs at alignment time (``train``, paired prompt by prompt
with ``safety-refusals``), and the attack needs harmful pairs to poison the user's fine-tuning data
(``attack``, on disjoint prompts). Answers only *signal* compliance with vague generic steps, which
is what fine-tuning learns from; they contain no operational content.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._harm import attack_prompts, compliance_answer, train_prompts
from hftguard.builtins.datasets._text import check_split, copies
from hftguard.components import Dataset
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext


class HarmfulCompliance(Dataset):
    """Harmful instructions with compliant answers: ``train`` (660, paired) and ``attack`` (420).

    ``train`` has exactly the prompts, order and ids of ``safety-refusals`` train; ``attack`` uses
    goals that never occur in ``train``. Answers say "Sure, here is how to ..." followed by generic
    First/Then/Finally steps with no actionable detail, and never contain a refusal phrase.
    """

    name = "harmful-compliance"
    version = "1"
    role = "harmful"
    splits = ("train", "attack")
    source = "stand-in for BeaverTails unsafe QA pairs (written for hftguard, no real instructions)"

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_examples(split))


@cache
def _examples(split: str) -> tuple[Example, ...]:
    rows = train_prompts() if split == "train" else attack_prompts()
    rng = random.Random(7201 if split == "train" else 7202)
    return tuple(
        Example(
            row.prompt,
            compliance_answer(rng, row.goal),
            "harmful",
            meta={"source": HarmfulCompliance.name, "id": row.id, "category": row.category},
        )
        for row in rows
    )
