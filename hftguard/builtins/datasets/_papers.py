"""Shared parts of the dataset components for the papers' real benchmarks.

Each such component reads the published data through :func:`hftguard.data.hub.load_records` from
its ``source`` option (a hub id by default, or a local copy) and turns the published records into
:class:`~hftguard.records.Example` objects. Schemas are those of the public releases (cited in each
module); nothing of the data itself ships with hftguard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from hftguard.data.hub import SourceRecord, load_records
from hftguard.errors import ConfigError, DataError

BEAVERTAILS_HUB = "PKU-Alignment/BeaverTails"
BEAVERTAILS_LICENSE = (
    "BeaverTails data is CC BY-NC 4.0: non-commercial research use only "
    "(and it contains offensive/harmful text)"
)
#: The 14 harm categories of BeaverTails, as the keys of each record's ``category`` dict.
BEAVERTAILS_CATEGORIES: tuple[str, ...] = (
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)
SOURCE_HELP = (
    "Where to read the data: a Hugging Face hub id (needs `pip install hftguard[hub]` and "
    "network), or a local file or directory in the published schema (see docs/datasets.md)."
)
MAX_NEW_TOKENS_HELP = "Decoding budget when the evaluator generates answers for this task."


class HubSourced:
    """Mixin: read records of the component's ``config.source`` (a hub id or a local copy)."""

    name: ClassVar[str]
    config: Any
    #: Hub configuration (``"main"`` for GSM8K), also tried as a subdirectory of a local copy.
    hub_config: ClassVar[str | None] = None
    #: Read this JSON file of the hub repository instead of its loading script.
    hub_file: ClassVar[str | None] = None

    def read(self, hub_split: str, local_names: Iterable[str] = ()) -> list[SourceRecord]:
        """The records of ``hub_split`` of ``self.config.source``, in published order."""
        records = load_records(
            self.config.source,
            dataset=self.name,
            hub_split=hub_split,
            hub_config=self.hub_config,
            local_names=local_names,
            hub_file=self.hub_file,
        )
        if not records:
            raise DataError(
                f"dataset {self.name!r}: {self.config.source} ({hub_split}) has no records",
                hint="check that source is the right file",
            )
        return records


def category_text(value: Any) -> str:
    """BeaverTails' ``category`` as text: the flagged category names joined with ``|``.

    The published value is a dict {category name: bool}; derived files sometimes store a plain
    string, kept as it is. ``"none"`` when no category is flagged (safe answers).
    """
    if isinstance(value, dict):
        flagged = [str(k) for k, v in value.items() if v]
        return "|".join(flagged) if flagged else "none"
    if value is None:
        return ""
    return str(value)


def check_range(dataset: str, start: int, stop: int) -> None:
    """Validate a half-open record range [start, stop)."""
    if start < 0 or stop <= start:
        raise ConfigError(
            f"dataset {dataset!r}: record range start={start}, stop={stop} is empty or negative",
            hint="use 0 <= start < stop (a half-open range of record indices)",
        )


def check_positive(dataset: str, option: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"dataset {dataset!r}: {option} must be at least 1, got {value}")


def take_range(
    dataset: str, records: Sequence[SourceRecord], start: int, stop: int, source: str
) -> Sequence[SourceRecord]:
    """``records[start:stop]``, or a DataError when the file is shorter than ``stop``."""
    if len(records) < stop:
        raise DataError(
            f"dataset {dataset!r}: {source} has {len(records)} records, fewer than stop={stop}",
            hint=f"lower the dataset's stop option (at most {len(records)}), or check the file",
        )
    return records[start:stop]
