"""``gsm8k``: GSM8K grade-school maths word problems, the papers' reasoning task.

Hub ``openai/gsm8k`` (formerly ``gsm8k``), configuration ``main``: fields ``question`` and
``answer`` (a worked solution ending ``#### <number>``), splits ``train`` 7,473 and ``test`` 1,319.
As in the papers' preprocessing, the target is the solution with ``####`` replaced by "The final
answer is: ", and Vaccine appends a think-step-by-step line to the question (``prompt_suffix``).
Scored with the papers' rule (docs/datasets.md): commas removed, the first number after "The
final answer is:" if present, else the last number, compared as floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._papers import (
    MAX_NEW_TOKENS_HELP,
    SOURCE_HELP,
    HubSourced,
    check_positive,
)
from hftguard.builtins.datasets._text import check_split
from hftguard.builtins.datasets.arithmetic import extract_answer, score_final_numbers
from hftguard.components import TaskDataset
from hftguard.data.hub import text_field
from hftguard.errors import DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "openai/gsm8k"
SCHEMA = ("question", "answer")
ANSWER_SEPARATOR = "####"
FINAL_ANSWER = "The final answer is: "
#: Vaccine's suffix (its GSM8K preprocessing); Booster and Antibody add nothing.
VACCINE_SUFFIX = "\nFirst think step by step and then answer the final number.\n"


def rewrite_answer(answer: str) -> str:
    """The papers' training target: ``####`` replaced by "The final answer is: "."""
    return answer.replace(ANSWER_SEPARATOR, FINAL_ANSWER)


@dataclass
class GSM8KConfig:
    """Options of ``gsm8k``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    prompt_suffix: str = field(
        default="",
        metadata={
            "help": "Text appended to every question: '' (Booster/Antibody) or Vaccine's "
            "'\\nFirst think step by step and then answer the final number.\\n'."
        },
    )
    max_new_tokens: int = field(default=200, metadata={"help": MAX_NEW_TOKENS_HELP})


class GSM8K(HubSourced, TaskDataset):
    """GSM8K maths word problems (train 7,473; test 1,319), answers ending "The final answer is".

    The question (plus ``prompt_suffix``) as instruction, no input; the worked solution with
    ``####`` replaced by "The final answer is: " as answer; ``meta["label"]`` is the number.
    """

    name = "gsm8k"
    version = "1"
    splits = ("train", "test")
    source = "GSM8K (openai/gsm8k, configuration main)"
    paper = "Vaccine, Lisa, Booster, Antibody: reasoning task; docs/datasets.md"
    max_new_tokens = 200
    hub_config = "main"
    Config = GSM8KConfig

    def __init__(self, config: GSM8KConfig | None = None) -> None:
        super().__init__(config)
        check_positive(self.name, "max_new_tokens", self.config.max_new_tokens)
        self.max_new_tokens = self.config.max_new_tokens

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        out = []
        for record in self.read(split):
            question = text_field(record, "question", self.name, SCHEMA)
            answer = text_field(record, "answer", self.name, SCHEMA)
            if ANSWER_SEPARATOR not in answer:
                raise DataError(
                    f"{record.where}: field 'answer' has no '{ANSWER_SEPARATOR} <number>' line",
                    hint="GSM8K answers end with '#### <final number>'",
                )
            response = rewrite_answer(answer)
            number = extract_answer(response)
            if number is None:
                raise DataError(f"{record.where}: no number after '{ANSWER_SEPARATOR}'")
            out.append(
                Example(
                    question + self.config.prompt_suffix,
                    response,
                    "benign",
                    meta={
                        "source": record.origin,
                        "id": f"gsm8k-{split}:{record.index}",
                        "category": "math",
                        "label": str(int(number)) if number.is_integer() else str(number),
                    },
                )
            )
        return out

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool]:
        return score_final_numbers(self.name, examples, completions)
