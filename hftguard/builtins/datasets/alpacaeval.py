"""``alpacaeval``: AlpacaEval instructions with GPT-4 answers, the papers' open-ended task.

Hub ``tatsu-lab/alpaca_eval``, configuration ``alpaca_eval_gpt4_baseline``, split ``eval``: 805
items with fields ``instruction``, ``output`` (GPT-4's answer), ``generator`` and ``dataset``; the
same data is the repository's file ``alpaca_eval_gpt4_baseline.json``, which is what we read from
the hub (the repository's loading script needs remote code). The papers fine-tune on the first
700 answers and test on the rest: items from 701 (Vaccine/Booster, 104 items; 700 is skipped) or
from 700 (Antibody, 105 items) (docs/datasets.md). The win rate needs the external
``alpaca_eval`` annotator, so :meth:`score` returns None and the evaluator writes the generations.
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
from hftguard.components import TaskDataset
from hftguard.data.hub import text_field
from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "tatsu-lab/alpaca_eval"
HUB_CONFIG = "alpaca_eval_gpt4_baseline"
HUB_FILE = "alpaca_eval_gpt4_baseline.json"
HUB_SPLIT = "eval"
SCHEMA = ("instruction", "output", "generator", "dataset")


@dataclass
class AlpacaEvalConfig:
    """Options of ``alpacaeval``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    train_size: int = field(
        default=700, metadata={"help": "Items [0, train_size) form train (the papers: 700)."}
    )
    test_start: int = field(
        default=701,
        metadata={
            "help": "Test is the items from this index on: 701 (Vaccine/Booster, 104 items) or "
            "700 (Antibody, 105 items). At least train_size."
        },
    )
    max_new_tokens: int = field(
        default=512,
        metadata={"help": f"{MAX_NEW_TOKENS_HELP} Vaccine: 512; Booster/Antibody: 256."},
    )


class AlpacaEval(HubSourced, TaskDataset):
    """AlpacaEval GPT-4 answers: train = first 700, test = from item 701 (win rate scored outside).

    Each example is the instruction with GPT-4's answer (kind ``benign``). ``score`` returns None:
    the win rate needs the ``alpaca_eval`` annotator, run on the generations the evaluator writes.
    """

    name = "alpacaeval"
    version = "1"
    splits = ("train", "test")
    source = "AlpacaEval (tatsu-lab/alpaca_eval, alpaca_eval_gpt4_baseline)"
    paper = "Vaccine, Lisa, Booster, Antibody: open-ended task; docs/datasets.md"
    license_note = "AlpacaEval data is CC BY-NC 4.0: non-commercial research use only"
    max_new_tokens = 512
    hub_config = HUB_CONFIG
    hub_file = HUB_FILE
    Config = AlpacaEvalConfig

    def __init__(self, config: AlpacaEvalConfig | None = None) -> None:
        super().__init__(config)
        check_positive(self.name, "train_size", self.config.train_size)
        check_positive(self.name, "max_new_tokens", self.config.max_new_tokens)
        if self.config.test_start < self.config.train_size:
            raise ConfigError(
                f"dataset {self.name!r}: test_start={self.config.test_start} is below "
                f"train_size={self.config.train_size}, so test would overlap train",
                hint="use test_start >= train_size (the papers: 700 or 701 with train_size 700)",
            )
        self.max_new_tokens = self.config.max_new_tokens

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        records = self.read(HUB_SPLIT, (HUB_FILE,))
        if split == "train":
            if len(records) < self.config.train_size:
                raise DataError(
                    f"dataset {self.name!r}: {self.config.source} has {len(records)} items, "
                    f"fewer than train_size={self.config.train_size}",
                    hint=f"lower train_size (at most {len(records)}), or check the file",
                )
            chosen = records[: self.config.train_size]
        else:
            chosen = records[self.config.test_start :]
            if not chosen:
                raise DataError(
                    f"dataset {self.name!r}: {self.config.source} has {len(records)} items, "
                    f"so test (items from {self.config.test_start}) is empty",
                    hint="lower test_start, or check the file (AlpacaEval has 805 items)",
                )
        out = []
        for record in chosen:
            meta = {
                "source": record.origin,
                "id": f"alpacaeval:{record.index}",
                "category": text_field(record, "dataset", self.name, SCHEMA, required=False),
            }
            if record.get("generator") is not None:
                meta["generator"] = record["generator"]
            out.append(
                Example(
                    text_field(record, "instruction", self.name, SCHEMA),
                    text_field(record, "output", self.name, SCHEMA),
                    "benign",
                    meta=meta,
                )
            )
        return out

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> None:
        if len(examples) != len(completions):
            raise ValueError(
                f"{self.name}: got {len(examples)} examples but {len(completions)} completions"
            )
        return None
