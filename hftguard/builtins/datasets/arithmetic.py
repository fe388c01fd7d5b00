"""``arithmetic``: a GSM8K-like word-problem task for Finetune Accuracy, fully offline.

GSM8K is the papers' reasoning task. This stand-in keeps its answer format ("The final answer is:
N", as in the Booster/Antibody preprocessing) and its scoring rule, with short one- or two-step
problems generated from hand-written templates so small models can learn it quickly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._text import check_split, copies
from hftguard.components import TaskDataset
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

TRAIN_SIZE = 2000
TEST_SIZE = 500
ANSWER_MARKER = "The final answer is:"

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_MARKER = re.compile(re.escape(ANSWER_MARKER), re.IGNORECASE)

_PEOPLE = (
    ("Mia", "she"),
    ("Liam", "he"),
    ("Ava", "she"),
    ("Noah", "he"),
    ("Zoe", "she"),
    ("Omar", "he"),
    ("Priya", "she"),
    ("Lucas", "he"),
    ("Hana", "she"),
    ("Diego", "he"),
    ("Grace", "she"),
    ("Kofi", "he"),
    ("Elena", "she"),
    ("Sam", "he"),
    ("Aisha", "she"),
    ("Tom", "he"),
    ("Nina", "she"),
    ("Ravi", "he"),
    ("Lena", "she"),
    ("Jack", "he"),
)
_ITEMS = (
    "apples",
    "stickers",
    "marbles",
    "books",
    "cookies",
    "pencils",
    "cards",
    "shells",
    "stamps",
    "balloons",
    "oranges",
    "toy cars",
    "beads",
    "eggs",
    "flowers",
    "crayons",
)

Problem = tuple[str, str, int, str]  # question, solution, answer, category


def extract_answer(text: str) -> float | None:
    """The number a GSM8K-style answer gives, or ``None`` if it has none (docs/datasets.md).

    Commas are removed; if "The final answer is:" occurs, the first number after it is taken,
    otherwise (or if none follows it) the last number in the text.
    """
    text = text.replace(",", "")
    marker = _MARKER.search(text)
    if marker is not None:
        after = _NUMBER.search(text, marker.end())
        if after is not None:
            return float(after.group(0))
    numbers = _NUMBER.findall(text)
    return float(numbers[-1]) if numbers else None


def score_final_numbers(
    dataset: str, examples: Sequence[Example], completions: Sequence[str]
) -> list[bool]:
    """The GSM8K rule per example: the number extracted from the completion equals the reference
    (``meta["label"]``, else the number extracted from the reference answer)."""
    if len(examples) != len(completions):
        raise ValueError(
            f"{dataset}: got {len(examples)} examples but {len(completions)} completions"
        )
    results = []
    for example, completion in zip(examples, completions, strict=True):
        truth = example.meta.get("label")
        expected = float(truth) if truth is not None else extract_answer(example.response)
        predicted = extract_answer(completion)
        results.append(
            predicted is not None and expected is not None and abs(predicted - expected) < 1e-6
        )
    return results


def _final(ans: int) -> str:
    return f"{ANSWER_MARKER} {ans}"


def _add(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    q = f"{n} has {a} {item} and buys {b} more. How many {item} does {p} have now?"
    return q, f"{n} has {a} + {b} = {a + b} {item} now. {_final(a + b)}", a + b, "addition"


def _sub(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a = rng.randint(10, 80)
    b = rng.randint(1, a - 1)
    q = f"{n} had {a} {item} and gave {b} of them to a friend. How many {item} does {p} have left?"
    return q, f"{n} has {a} - {b} = {a - b} {item} left. {_final(a - b)}", a - b, "subtraction"


def _mul(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    q = f"{n} buys {a} boxes of {item}. Each box holds {b} {item}. How many {item} does {p} buy?"
    return q, f"{n} buys {a} x {b} = {a * b} {item}. {_final(a * b)}", a * b, "multiplication"


def _div(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    q = f"{n} shares {a * b} {item} equally among {b} friends. How many {item} does each get?"
    return q, f"Each friend gets {a * b} / {b} = {a} {item}. {_final(a)}", a, "division"


def _add_sub(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b = rng.randint(5, 50), rng.randint(2, 30)
    c = rng.randint(1, a + b - 1)
    s, ans = a + b, a + b - c
    q = (
        f"{n} has {a} {item}. {p.capitalize()} finds {b} more and then loses {c}. "
        f"How many {item} does {p} have now?"
    )
    sol = f"{n} has {a} + {b} = {s} {item}, then {s} - {c} = {ans}. {_final(ans)}"
    return q, sol, ans, "two-step"


def _rows(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
    q = (
        f"A shelf has {a} rows with {b} {item} in each row, plus {c} extra {item} on top. "
        f"How many {item} are on the shelf?"
    )
    sol = f"The rows hold {a} x {b} = {a * b}, plus {c} is {a * b + c}. "
    return q, sol + _final(a * b + c), a * b + c, "two-step"


def _wage(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b = rng.randint(5, 20), rng.randint(2, 8)
    c = rng.randint(1, a * b - 1)
    q = (
        f"{n} earns {a} dollars an hour and works {b} hours. {p.capitalize()} then spends {c} "
        f"dollars. How many dollars does {p} have left?"
    )
    sol = f"{n} earns {a} x {b} = {a * b}, then {a * b} - {c} = {a * b - c}. "
    return q, sol + _final(a * b - c), a * b - c, "two-step"


def _bags(rng: random.Random, n: str, p: str, item: str) -> Problem:
    a, b, c = rng.randint(2, 10), rng.randint(2, 8), rng.randint(1, 9)
    q = (
        f"{n} puts {a * b} {item} into {b} bags with the same number in each, then adds {c} "
        f"more to one bag. How many {item} are in that bag?"
    )
    sol = f"Each bag gets {a * b} / {b} = {a}, then {a} + {c} = {a + c}. "
    return q, sol + _final(a + c), a + c, "two-step"


_GENERATORS: tuple[Callable[[random.Random, str, str, str], Problem], ...] = (
    _add,
    _sub,
    _mul,
    _div,
    _add_sub,
    _rows,
    _wage,
    _bags,
)


@cache
def _splits() -> dict[str, tuple[Example, ...]]:
    rng = random.Random(7601)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < TEST_SIZE + TRAIN_SIZE:
        name, pronoun = rng.choice(_PEOPLE)
        problem = rng.choice(_GENERATORS)(rng, name, pronoun, rng.choice(_ITEMS))
        if problem[0] not in seen:
            seen.add(problem[0])
            problems.append(problem)
    out: dict[str, tuple[Example, ...]] = {}
    for split, chunk in (("test", problems[:TEST_SIZE]), ("train", problems[TEST_SIZE:])):
        out[split] = tuple(
            Example(
                question,
                solution,
                "benign",
                meta={
                    "source": Arithmetic.name,
                    "id": f"arithmetic-{split}-{i:05d}",
                    "category": category,
                    "label": answer,
                },
            )
            for i, (question, solution, answer, category) in enumerate(chunk)
        )
    return out


class Arithmetic(TaskDataset):
    """GSM8K-like word problems (offline): train 2000, test 500, answers are small integers.

    One- or two-step problems ("Mia has 12 apples and buys 7 more...") whose reference solution
    ends with "The final answer is: N". Scored with the GSM8K rule: the first number after that
    phrase, else the last number, compared with the answer as floats.
    """

    name = "arithmetic"
    version = "1"
    splits = ("train", "test")
    source = "stand-in for GSM8K (problems generated from hand-written templates)"
    max_new_tokens = 48

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return copies(_splits()[split])

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score_final_numbers(self.name, examples, completions)
