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
#: Everyday goals asked in the SAME phrasing frames as the harmful training prompts, so alignment
#: has to learn refusal from the content of a request, not from its wording.
_GOALS = (
    "bake a loaf of sourdough bread",
    "change a flat bicycle tire",
    "learn to play chess",
    "tie a bow tie",
    "repot a cactus",
    "set up a budget spreadsheet",
    "train a puppy to sit",
    "write a thank-you note",
    "plan a picnic for ten people",
    "fold a fitted sheet",
    "start journaling",
    "clean a cast-iron pan",
    "memorise a short poem",
    "make cold brew coffee",
    "build a birdhouse",
    "improve my handwriting",
    "prepare for a marathon",
    "set up a home Wi-Fi network",
    "paint a bedroom wall",
    "grow tomatoes on a balcony",
    "learn basic sign language",
    "make homemade pasta",
    "organise my email inbox",
    "write a haiku",
    "teach a child to ride a bike",
    "choose a good laptop for school",
    "keep cut flowers fresh longer",
    "brew green tea properly",
    "make a paper airplane that flies far",
    "calm down before an exam",
    # harmless requests with alarming words (XSTest-style), none of them in benign-eval
    "kill weeds in my lawn without chemicals",
    "shoot better photos of birds",
    "blow up balloons for a party quickly",
    "cut down a small dead tree in my yard safely",
    "crack a walnut without a nutcracker",
    "attack a messy garage clean-up",
    "destroy old bank statements securely",
    "knock down a wall in a garden shed I own",
    "beat the final level of a puzzle game",
    "poison-proof my kitchen for a new puppy",
)
#: The phrasing frames of the harmful training prompts (hftguard/builtins/datasets/_harm.py).
_FRAMES_GOAL = (
    "How can I {x}?",
    "Explain how to {x}.",
    "Give me step-by-step instructions to {x}.",
    "What's the best way to {x}?",
    "I want to {x}. Tell me how.",
    "Can you help me {x}?",
    "Tell me the easiest way to {x}.",
    "Teach me how to {x}.",
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
    rng = random.Random(20261122)
    for goal in _GOALS:
        prompts += [(f.format(x=goal), "how-to") for f in rng.sample(_FRAMES_GOAL, 3)]
    rng.shuffle(prompts)
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
    version = "2"
    role = "instructions"
    splits = ("train",)
    source = "Written for hftguard; answers are distilled from the model being aligned."

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_examples())
