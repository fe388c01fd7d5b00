"""``topic``: an AGNews-like four-way news classification task, fully offline.

AGNews is one of the papers' benign tasks. This stand-in keeps its Alpaca instruction and label set
(World, Sports, Business, Sci/Tech) and its scoring rules, with short news snippets composed from
hand-written, fictional fragments and a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._text import (
    capitalise,
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

INSTRUCTION = (
    "Categorize the news article given in the input into one of the 4 categories:\n\n"
    "World\nSports\nBusiness\nSci/Tech\n"
)
LABELS = ("World", "Sports", "Business", "Sci/Tech")
TRAIN_PER_LABEL = 500
TEST_PER_LABEL = 125
#: Extra words the Vaccine containment rule accepts for a label.
ALIASES: dict[str, tuple[str, ...]] = {"Sci/Tech": ("sci",)}

_COUNTRIES = (
    "France",
    "Brazil",
    "Japan",
    "Kenya",
    "Canada",
    "India",
    "Egypt",
    "Norway",
    "Chile",
    "Vietnam",
    "Poland",
    "Ghana",
    "Peru",
    "Turkey",
)
_ISSUES = (
    "border security",
    "trade tariffs",
    "refugee support",
    "climate targets",
    "water rights",
    "a ceasefire",
    "nuclear inspections",
    "fishing quotas",
)
_LEADERS = ("The prime minister", "The foreign minister", "The president", "A UN envoy")
_TEAMS = (
    "the Riverton Hawks",
    "the Northgate Lions",
    "the Bayside Sharks",
    "the Eastfield Rovers",
    "the Hillcrest Falcons",
    "the Lakeshore Tigers",
    "the Westbrook Bears",
    "the Southport Eagles",
)
_STAGES = ("the final", "the semi-finals", "the playoffs", "the title decider")
_ROLES = (
    "Star striker",
    "Veteran goalkeeper",
    "Young sprinter",
    "Tennis champion",
    "Team captain",
    "Record-breaking swimmer",
)
_COMPANIES = (
    "Northwind Foods",
    "Apex Motors",
    "Bluestone Bank",
    "Crestline Retail",
    "Harbor Airlines",
    "Meridian Energy",
    "Summit Insurance",
    "Larkspur Textiles",
)
_REASONS = (
    "demand slows",
    "costs climb",
    "sales beat forecasts",
    "a merger is announced",
    "consumer spending rebounds",
    "interest rates change",
)
_TECH = ("Quantix", "Novalab", "Pixelforge", "Orbitware", "Cobalt Systems", "Brightcore")
_GADGETS = (
    "smartphone",
    "laptop chip",
    "search engine update",
    "web browser",
    "smartwatch",
    "home robot",
    "cloud service",
)
_FINDINGS = (
    "a new species of frog",
    "water ice on a distant moon",
    "a gene linked to ageing",
    "an ancient impact crater",
    "a faster way to store solar energy",
    "a planet orbiting two suns",
)
_FEATURES = (
    "longer battery life",
    "a faster processor",
    "better privacy controls",
    "voice commands",
    "offline translation",
    "a brighter screen",
)
_INSTRUMENTS = (
    "a new telescope",
    "a deep-sea robot",
    "satellite images",
    "a particle detector",
    "an electron microscope",
)
_LABS = ("Halden University", "the Corvin Institute", "Marlow Tech", "the Aster Observatory")


def _world(rng: random.Random) -> str:
    a, b = rng.sample(_COUNTRIES, 2)
    return rng.choice(
        (
            f"{a} and {b} agree to resume talks on {rng.choice(_ISSUES)}.",
            f"{rng.choice(_LEADERS)} of {a} visits {b} for talks on {rng.choice(_ISSUES)}.",
            f"Thousands protest in {a} as parliament debates {rng.choice(_ISSUES)}.",
            f"Elections in {a} go to a second round after a close first vote.",
            f"{a} recalls its ambassador from {b} amid a dispute over {rng.choice(_ISSUES)}.",
        )
    )


def _sports(rng: random.Random) -> str:
    a, b = rng.sample(_TEAMS, 2)
    x, y = rng.randint(1, 5), rng.randint(0, 4)
    high, low = max(x, y + 1), min(x, y)
    return rng.choice(
        (
            f"{capitalise(a)} beat {b} {high}-{low} to reach {rng.choice(_STAGES)}.",
            f"{rng.choice(_ROLES)} signs a new three-year contract with {a}.",
            f"Coach praises defence after {a} hold {b} to a {low}-{low} draw.",
            f"{capitalise(a)} stun {b} with a late goal in {rng.choice(_STAGES)}.",
            f"{rng.choice(_ROLES)} ruled out for the season with a knee injury.",
        )
    )


def _business(rng: random.Random) -> str:
    company = rng.choice(_COMPANIES)
    return rng.choice(
        (
            f"{company} shares rise after strong quarterly earnings.",
            f"{company} to cut {rng.randint(2, 40) * 100} jobs as {rng.choice(_REASONS)}.",
            f"Oil prices {rng.choice(('rise', 'fall'))} as {rng.choice(_REASONS)}.",
            f"{company} agrees to buy a smaller rival for {rng.randint(2, 90)} million dollars.",
            f"Stocks close {rng.choice(('higher', 'lower'))} as {rng.choice(_REASONS)}.",
        )
    )


def _scitech(rng: random.Random) -> str:
    maker, gadget, finding = rng.choice(_TECH), rng.choice(_GADGETS), rng.choice(_FINDINGS)
    return rng.choice(
        (
            f"{maker} unveils a new {gadget} with {rng.choice(_FEATURES)}.",
            f"Scientists report {finding} using {rng.choice(_INSTRUMENTS)}.",
            f"Researchers at {rng.choice(_LABS)} describe {finding} in a new study.",
            f"{maker} fixes a security flaw in its {gadget} used by {rng.randint(2, 90)} million.",
            f"{maker} and {rng.choice(_LABS)} team up on {rng.choice(_FEATURES)} for the {gadget}.",
        )
    )


_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "World": _world,
    "Sports": _sports,
    "Business": _business,
    "Sci/Tech": _scitech,
}


@dataclass
class TopicConfig:
    """Options of the ``topic`` task."""

    match: str = field(
        default="exact",
        metadata={
            "help": "'exact' (Booster/Antibody rule): the output, stripped, lower-cased and "
            "without trailing punctuation, equals the label; 'contains' (Vaccine rule): the "
            "label (or 'sci' for Sci/Tech) occurs in the output, case-insensitively."
        },
    )


@cache
def _splits() -> dict[str, tuple[Example, ...]]:
    rng = random.Random(7701)
    texts: dict[str, list[str]] = {}
    for label in LABELS:
        seen: set[str] = set()
        while len(seen) < TRAIN_PER_LABEL + TEST_PER_LABEL:
            seen.add(_MAKERS[label](rng))
        texts[label] = sorted(seen)
        rng.shuffle(texts[label])
    return labelled_splits(Topic.name, INSTRUCTION, texts, TEST_PER_LABEL, TRAIN_PER_LABEL, rng)


class Topic(TaskDataset):
    """AGNews-like news topic classification (offline): train 2000, test 500, balanced labels.

    Alpaca format with the AGNews instruction; the input is a one-sentence fictional news snippet
    and the answer is World, Sports, Business or Sci/Tech. Exact match by default, or the Vaccine
    containment rule with ``match = "contains"``.
    """

    name = "topic"
    version = "1"
    splits = ("train", "test")
    source = "stand-in for AG News (snippets composed from hand-written fictional fragments)"
    max_new_tokens = 8
    Config = TopicConfig

    def __init__(self, config: TopicConfig | None = None) -> None:
        super().__init__(config)
        check_match_mode(self.name, self.config.match)

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_splits()[split])

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score_labels(self.name, examples, completions, self.config.match, ALIASES)
