"""``benign-instructions``: everyday requests used as a *retain set* during alignment.

Alignment on refusals alone teaches a small model to refuse everything. Mixing in benign requests
answered by the base model itself (self-distillation, done by ``hftguard align`` when ``retain`` is
set) keeps it helpful. The prompts share no template with ``benign-eval``, so over-refusal is still
measured on unseen requests.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._text import check_split, copies
from hftguard.components import Dataset
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

_TOPICS = (
    "photosynthesis",
    "the water cycle",
    "compound interest",
    "the French Revolution",
    "how vaccines train the immune system",
    "black holes",
    "supply and demand",
    "plate tectonics",
    "the Pythagorean theorem",
    "how a bill becomes law",
    "the life cycle of a butterfly",
    "renewable energy",
    "the stock market",
    "how airplanes fly",
    "the Roman Empire",
    "machine learning",
    "the human heart",
    "climate and weather",
    "the printing press",
    "how batteries work",
)
_THINGS = (
    "autumn leaves",
    "a lighthouse",
    "morning coffee",
    "a rainy city",
    "an old library",
    "the ocean at night",
    "a mountain village",
    "a friendly robot",
    "spring flowers",
    "a long train journey",
)
_ACTIVITIES = (
    "starting a vegetable garden",
    "running a first 5k",
    "keeping a tidy desk",
    "learning to juggle",
    "planning a birthday party",
    "saving money each month",
    "sleeping better",
    "writing a cover letter",
    "preparing for a job interview",
    "reading more books",
    "caring for a houseplant",
    "organising a closet",
    "staying focused while working from home",
    "learning to swim",
    "packing for a weekend trip",
)
_PAIRS = (
    ("a virus", "a bacterium"),
    ("a river", "a canal"),
    ("a lake", "a sea"),
    ("a crocodile", "an alligator"),
    ("speed", "velocity"),
    ("baking soda", "baking powder"),
    ("a comet", "an asteroid"),
    ("RAM", "storage"),
    ("a simile", "a metaphor"),
    ("an ape", "a monkey"),
)
_FRAMES_TOPIC = (
    "Explain {x} in simple terms.",
    "Give a short overview of {x}.",
    "Why is {x} important? Answer briefly.",
)
_FRAMES_THING = ("Write a short poem about {x}.", "Write two sentences describing {x}.")
_FRAMES_ACTIVITY = ("Give me three tips for {x}.", "What should a beginner know about {x}?")
_FRAMES_PAIR = ("What is the difference between {a} and {b}?",)


@cache
def _examples() -> tuple[Example, ...]:
    prompts: list[tuple[str, str]] = []
    prompts += [(f.format(x=x), "explain") for f, x in itertools.product(_FRAMES_TOPIC, _TOPICS)]
    prompts += [(f.format(x=x), "creative") for f, x in itertools.product(_FRAMES_THING, _THINGS)]
    prompts += [
        (f.format(x=x), "advice") for f, x in itertools.product(_FRAMES_ACTIVITY, _ACTIVITIES)
    ]
    prompts += [(f.format(a=a, b=b), "compare") for f in _FRAMES_PAIR for a, b in _PAIRS]
    random.Random(20261122).shuffle(prompts)
    return tuple(
        Example(
            p,
            "",
            "benign",
            meta={"source": "benign-instructions", "id": f"bi-{i}", "category": cat},
        )
        for i, (p, cat) in enumerate(prompts)
    )


class BenignInstructions(Dataset):
    """Everyday benign requests (no reference answers): the retain set for alignment."""

    name = "benign-instructions"
    version = "1"
    role = "instructions"
    splits = ("train",)
    source = "Written for hftguard; answers are distilled from the model being aligned."

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_examples())
