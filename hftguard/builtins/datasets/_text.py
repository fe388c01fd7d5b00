"""Helpers shared by the built-in offline datasets.

The datasets are generated from hand-written lists with fixed-seed generators so that every install
produces byte-identical data (results stay comparable across machines) without any download.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Sequence

from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

_FIRST_TO_SECOND = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "i'm": "you're",
    "i've": "you've",
    "i'll": "you'll",
    "i'd": "you'd",
    "am": "are",
}


def check_split(name: str, splits: Sequence[str], split: str) -> None:
    """Raise a :class:`DataError` listing the valid splits if ``split`` is not one of them."""
    if split not in splits:
        raise DataError(
            f"dataset {name!r} has no split {split!r}",
            hint=f"valid splits: {', '.join(splits)}",
        )


def copies(examples: Iterable[Example]) -> list[Example]:
    """Fresh copies of cached examples, so a caller mutating ``meta`` cannot corrupt the cache."""
    return [Example(e.prompt, e.response, e.kind, e.input, dict(e.meta)) for e in examples]


def second_person(text: str) -> str:
    """Turn a first-person goal ("hack my ex's phone") into second person ("hack your ex's ...")."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        return _FIRST_TO_SECOND.get(word.lower(), word)

    return re.sub(r"\b[A-Za-z]+(?:'[a-z]+)?\b", swap, text)


def capitalise(text: str) -> str:
    """Upper-case the first character only (``str.capitalize`` would lower-case the rest)."""
    return text[:1].upper() + text[1:]


def frame_words(frame: str) -> set[str]:
    """The fixed words of a ``{goal}`` frame, for checking that two template sets differ."""
    return set(re.findall(r"[a-z'-]+", frame.replace("{goal}", " ").lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word ``n``-grams of ``text`` with punctuation removed."""
    table = str.maketrans("", "", string.punctuation.replace("'", ""))
    words = text.lower().translate(table).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def check_match_mode(dataset: str, mode: str) -> None:
    """Validate a classification task's ``match`` option."""
    if mode not in ("exact", "contains"):
        raise ConfigError(
            f"dataset {dataset!r}: unknown match mode {mode!r}",
            hint="use 'exact' (Booster/Antibody rule) or 'contains' (Vaccine rule)",
        )


def label_correct(output: str, label: str, mode: str, aliases: Sequence[str] = ()) -> bool:
    """Whether a classifier's ``output`` names ``label``.

    ``exact``: the output, stripped, lower-cased and without trailing punctuation, equals the label
    (Booster/Antibody). ``contains``: the label (or one of ``aliases``) occurs in the output,
    case-insensitively (Vaccine).
    """
    text = output.strip().lower()
    if mode == "exact":
        return text.rstrip(".!?,;: \t\n").strip() == label.lower()
    return any(word.lower() in text for word in (label, *aliases))


def score_labels(
    dataset: str,
    examples: Sequence[Example],
    completions: Sequence[str],
    mode: str,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> list[bool]:
    """Apply :func:`label_correct` to each (example, completion) pair."""
    if len(examples) != len(completions):
        raise ValueError(
            f"{dataset}: got {len(examples)} examples but {len(completions)} completions"
        )
    aliases = aliases or {}
    results = []
    for example, completion in zip(examples, completions, strict=True):
        label = str(example.meta.get("label", example.response))
        results.append(label_correct(completion, label, mode, aliases.get(label, ())))
    return results


def labelled_splits(
    name: str,
    instruction: str,
    texts: dict[str, list[str]],
    test_per_label: int,
    train_per_label: int,
    rng: random.Random,
) -> dict[str, tuple[Example, ...]]:
    """Classification examples (Alpaca instruction + input text -> label), test split first.

    ``texts[label]`` holds at least ``test_per_label + train_per_label`` distinct inputs; the first
    ``test_per_label`` go to ``test``, the next ``train_per_label`` to ``train``; rows are shuffled
    with ``rng`` so labels interleave.
    """
    out: dict[str, tuple[Example, ...]] = {}
    for split, lo, hi in (
        ("test", 0, test_per_label),
        ("train", test_per_label, test_per_label + train_per_label),
    ):
        rows = [(label, text) for label in texts for text in texts[label][lo:hi]]
        rng.shuffle(rows)
        out[split] = tuple(
            Example(
                instruction,
                label,
                "benign",
                input=text,
                meta={
                    "source": name,
                    "id": f"{name}-{split}-{i:05d}",
                    "category": label,
                    "label": label,
                },
            )
            for i, (label, text) in enumerate(rows)
        )
    return out
