"""Reading the RepNoise refusal-paired BeaverTails file, shared by its two components.

``anonymous4486/repnoise_beavertail`` on the Hugging Face hub (split ``train``), file
``beavertails_with_refusals_train.json``: BeaverTails harmful QA records, each with a ``prompt``,
the harmful ``response`` and a ``refusal`` written as ``"Question: <prompt>\\nAnswer: <refusal>"``
(docs/datasets.md). Booster aligns on records [5000, 10000): refusals as alignment data and the
same records' harmful responses as its harmful stream; it fine-tunes on records from 0. Antibody's
filtered copy, ``beavertails_with_refusals_train_filtered.json``, has the same schema and is used
from record 0 to 5000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hftguard.builtins.datasets._papers import (
    SOURCE_HELP,
    HubSourced,
    category_text,
    check_range,
    take_range,
)
from hftguard.data.hub import SourceRecord, text_field
from hftguard.errors import DataError
from hftguard.records import Example

HUB_ID = "anonymous4486/repnoise_beavertail"
HUB_SPLIT = "train"
SCHEMA = ("prompt", "response", "refusal")
LOCAL_NAMES = ("beavertails_with_refusals_train.json",)
ANSWER_MARK = "\nAnswer: "
LICENSE = (
    "derived from BeaverTails (CC BY-NC 4.0): non-commercial research use only "
    "(and it contains offensive/harmful text)"
)
PAPER = (
    "RepNoise (arXiv 2405.14577) refusal data as used by Booster (arXiv 2409.01586, records "
    "5000-10000) and Antibody (arXiv 2603.00498, filtered file, records 0-5000); "
    "docs/datasets.md"
)


@dataclass
class RepNoiseConfig:
    """Options of ``repnoise-refusals`` and ``repnoise-harmful``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    start: int = field(
        default=5000,
        metadata={
            "help": "First record (0-based) of the alignment range [start, stop); Booster: "
            "5000, Antibody's filtered file: 0."
        },
    )
    stop: int = field(
        default=10000,
        metadata={
            "help": "End (exclusive) of the alignment range [start, stop); Booster: 10000, "
            "Antibody: 5000. The file must have at least this many records."
        },
    )


def parse_refusal(record: SourceRecord, dataset: str) -> str:
    """The refusal text of a record: what follows ``"\\nAnswer: "`` (the whole value if absent)."""
    raw = text_field(record, "refusal", dataset, SCHEMA)
    prompt = record.get("prompt")
    prefix = f"Question: {prompt}{ANSWER_MARK}"
    if isinstance(prompt, str) and raw.startswith(prefix):
        refusal = raw[len(prefix) :]  # robust even if the prompt itself contains the marker
    else:
        refusal = raw.split(ANSWER_MARK, 1)[1] if ANSWER_MARK in raw else raw
    refusal = refusal.strip()
    if not refusal:
        raise DataError(
            f"{record.where}: field 'refusal' has no text after {ANSWER_MARK.strip()!r}",
            hint="every record needs a non-empty refusal",
        )
    return refusal


def repnoise_range(component: HubSourced, start: int, stop: int) -> Sequence[SourceRecord]:
    """Records [start, stop) of the component's source; an error if it has fewer than ``stop``."""
    records = component.read(HUB_SPLIT, LOCAL_NAMES)
    return take_range(component.name, records, start, stop, component.config.source)


def repnoise_example(record: SourceRecord, dataset: str, refusal: bool) -> Example:
    """The record as a refusal example (parsed refusal) or a harmful one (its ``response``)."""
    prompt = text_field(record, "prompt", dataset, SCHEMA)
    meta = {
        "source": record.origin,
        # the same id in both components: the pair shares its source record
        "id": f"repnoise:{record.index}",
        "category": category_text(record.get("category")),
    }
    if refusal:
        return Example(prompt, parse_refusal(record, dataset), "refusal", meta=meta)
    return Example(prompt, text_field(record, "response", dataset, SCHEMA), "harmful", meta=meta)


def validate(dataset: str, config: RepNoiseConfig) -> None:
    check_range(dataset, config.start, config.stop)
