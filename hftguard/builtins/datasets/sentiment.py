"""``sentiment``: an SST2-like binary sentiment task for Finetune Accuracy, fully offline.

SST2 is the papers' default benign task. This stand-in keeps its Alpaca instruction and label words
so defenses, prompts and scoring rules behave the same, while tests and CPU runs need no download.
Sentences are composed from hand-written movie-review fragments with a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._text import (
    check_match_mode,
    check_split,
    copies,
    labelled_splits,
    score_labels,
)
from hftguard.components import TaskDataset
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
TRAIN_PER_LABEL = 1000
TEST_PER_LABEL = 250

_SUBJECTS = (
    "the acting",
    "the plot",
    "the soundtrack",
    "the dialogue",
    "the cinematography",
    "the ending",
    "the lead performance",
    "the pacing",
    "the script",
    "the cast",
    "this film",
    "the movie",
    "the story",
    "the direction",
    "the humour",
    "the supporting cast",
    "the final act",
    "the opening scene",
    "the screenplay",
    "the score",
    "this sequel",
    "the documentary",
    "the animation",
    "the romance at its centre",
)
_ADVERBS = (
    "",
    "truly",
    "really",
    "surprisingly",
    "consistently",
    "thoroughly",
    "quite",
    "remarkably",
)
_ADJECTIVES = {
    "positive": (
        "wonderful",
        "charming",
        "moving",
        "gripping",
        "clever",
        "beautiful",
        "delightful",
        "brilliant",
        "heartfelt",
        "funny",
        "touching",
        "stunning",
        "refreshing",
        "thoughtful",
        "engaging",
        "powerful",
        "witty",
        "memorable",
        "superb",
        "inventive",
        "warm",
        "captivating",
    ),
    "negative": (
        "dull",
        "tedious",
        "clumsy",
        "lifeless",
        "predictable",
        "boring",
        "confusing",
        "shallow",
        "forgettable",
        "awkward",
        "bland",
        "messy",
        "painful",
        "pointless",
        "flat",
        "tiresome",
        "lazy",
        "uninspired",
        "dreary",
        "cheap",
        "hollow",
        "sloppy",
    ),
}
_CLAUSES = {
    "positive": (
        "it kept me hooked",
        "it left me smiling",
        "it won me over",
        "i would happily watch it again",
        "it stayed with me for days",
        "the time flew by",
        "i recommended it to all my friends",
    ),
    "negative": (
        "it put me to sleep",
        "it fell completely flat",
        "it dragged on forever",
        "i wanted my money back",
        "i kept checking my watch",
        "i left before the end",
        "nothing about it worked for me",
    ),
}
_VERB_PHRASES = {
    "positive": (
        "kept me hooked",
        "left me smiling",
        "won me over completely",
        "makes the whole thing worth watching",
        "lifts the film above the usual fare",
        "deserves every award it gets",
        "is a joy to watch",
    ),
    "negative": (
        "put me to sleep",
        "falls completely flat",
        "drags on forever",
        "ruins whatever promise the premise had",
        "never comes together",
        "is a chore to sit through",
        "wastes a talented cast",
    ),
}
_OTHER = {"positive": "negative", "negative": "positive"}


@dataclass
class SentimentConfig:
    """Options of the ``sentiment`` task."""

    match: str = field(
        default="exact",
        metadata={
            "help": "'exact' (Booster/Antibody rule): the output, stripped, lower-cased and "
            "without trailing punctuation, equals the label word; 'contains' (Vaccine rule): "
            "the label word occurs in the output, case-insensitively."
        },
    )


def _sentence(rng: random.Random, label: str) -> str:
    subject = rng.choice(_SUBJECTS)
    adverb = rng.choice(_ADVERBS)
    adjective = rng.choice(_ADJECTIVES[label])
    frame = rng.randrange(6)
    if frame == 0:
        text = f"{subject} is {adverb} {adjective}."
    elif frame == 1:
        text = f"{subject} feels {adverb} {adjective} from start to finish."
    elif frame == 2:
        text = f"i found {subject} {adverb} {adjective}."
    elif frame == 3:
        text = f"{subject} is {adjective}, and {rng.choice(_CLAUSES[label])}."
    elif frame == 4:
        text = f"{subject} {rng.choice(_VERB_PHRASES[label])}."
    else:  # negated opposite adjective: "not clever at all" is negative
        opposite = rng.choice(_ADJECTIVES[_OTHER[label]])
        text = f"{subject} is not {opposite} at all; it is {adjective}."
    return " ".join(text.split())


@cache
def _splits() -> dict[str, tuple[Example, ...]]:
    rng = random.Random(7501)
    sentences: dict[str, list[str]] = {}
    seen: set[str] = set()
    for label in ("positive", "negative"):
        chosen: list[str] = []
        while len(chosen) < TRAIN_PER_LABEL + TEST_PER_LABEL:
            text = _sentence(rng, label)
            if text not in seen:
                seen.add(text)
                chosen.append(text)
        sentences[label] = chosen
    return labelled_splits(
        Sentiment.name, INSTRUCTION, sentences, TEST_PER_LABEL, TRAIN_PER_LABEL, rng
    )


class Sentiment(TaskDataset):
    """SST2-like sentiment classification (offline): train 2000, test 500, balanced labels.

    Alpaca format with the SST2 instruction; the input is a short review sentence and the answer is
    ``positive`` or ``negative``. Scored with the Booster/Antibody exact rule by default, or the
    Vaccine containment rule with ``match = "contains"``.
    """

    name = "sentiment"
    version = "1"
    splits = ("train", "test")
    source = "stand-in for GLUE SST2 (sentences composed from hand-written review fragments)"
    max_new_tokens = 8
    Config = SentimentConfig

    def __init__(self, config: SentimentConfig | None = None) -> None:
        super().__init__(config)
        check_match_mode(self.name, self.config.match)

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_splits()[split])

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score_labels(self.name, examples, completions, self.config.match)
