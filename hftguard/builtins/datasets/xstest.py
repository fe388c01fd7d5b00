"""``xstest`` / ``xstest-unsafe``: XSTest v2 (Röttger et al., NAACL 2024, arXiv 2308.01263).

Published schema (``xstest_prompts.csv`` in github.com/paul-rottger/exaggerated-safety): columns
``id, prompt, type, label, focus, note``; ``label`` is ``safe`` for the 250 prompts a
well-calibrated model should answer (homonyms, figurative language, safe targets, safe contexts...)
and ``unsafe`` for the 200 contrast prompts, whose ``type`` starts with ``contrast_`` (the
repository's README). The repository's earlier ``xstest_v2_prompts.csv`` has no ``label`` column;
a record without one is labelled by its ``type`` (``contrast_...`` = unsafe). Hub copies:
``walledai/XSTest`` (split ``test``; ``prompt``, ``type``, ``label``, ``focus``, ``note``) and
``natolambert/xstest-v2-copy`` (the prompts are its split ``prompts``). Licence: CC BY 4.0.

``xstest`` is the over-refusal set (role ``benign-eval``, like ``benign-eval``): the safe prompts,
kind ``benign``. ``xstest-unsafe`` is the contrast set (role ``harmful-eval``): the unsafe
prompts, kind ``harmful``, so a model that refuses everything can be told from a calibrated one.

Sources checked for the schema: the repository's README and CSV header
(github.com/paul-rottger/exaggerated-safety), and the hub cards of the two copies. No XSTest data
ships with hftguard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from hftguard.builtins.datasets._papers import SOURCE_HELP, HubSourced
from hftguard.builtins.datasets._text import check_split
from hftguard.components import Dataset
from hftguard.data.hub import SourceRecord, text_field
from hftguard.errors import DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "walledai/XSTest"
HUB_SPLIT = "test"
#: Columns of the published CSV (``id`` is absent from the walledai copy).
SCHEMA = ("id", "prompt", "type", "label", "focus", "note")
LABELS = ("safe", "unsafe")
#: ``type`` prefix of the unsafe contrast prompts.
CONTRAST = "contrast_"
#: The published file in a local directory (current name first, then the repository's older one).
LOCAL_NAMES = ("xstest_prompts.csv", "xstest_v2_prompts.csv")
LICENSE = "XSTest prompts are CC BY 4.0 (attribution required; the repository's README)"
PAPER = (
    "XSTest (Röttger et al., NAACL 2024, arXiv 2308.01263): 250 safe prompts for over-refusal "
    "and 200 unsafe contrast prompts"
)


@dataclass
class XSTestConfig:
    """Options of ``xstest`` and ``xstest-unsafe``."""

    source: str = field(default=HUB_ID, metadata={"help": SOURCE_HELP})
    hub_split: str = field(
        default=HUB_SPLIT,
        metadata={
            "help": "Split to read from a hub id or a directory in the hub's layout (a file is "
            "read whole): 'test' for walledai/XSTest, 'prompts' for natolambert/xstest-v2-copy."
        },
    )


def xstest_label(record: SourceRecord, dataset: str) -> str:
    """``safe`` or ``unsafe``: the record's ``label``, else derived from its ``type``."""
    label = text_field(record, "label", dataset, SCHEMA, required=False).strip().lower()
    if label:
        if label not in LABELS:
            raise DataError(
                f"{record.where}: field 'label' is {label!r}, not 'safe' or 'unsafe'",
                hint=f"dataset {dataset!r} reads XSTest's published schema ({', '.join(SCHEMA)})",
            )
        return label
    kind = text_field(record, "type", dataset, SCHEMA, required=False).strip()
    if not kind:
        raise DataError(
            f"{record.where}: neither a 'label' nor a 'type' field to tell safe from unsafe",
            hint=f"dataset {dataset!r} reads XSTest's published schema ({', '.join(SCHEMA)}); "
            "is source the right file?",
        )
    return "unsafe" if kind.startswith(CONTRAST) else "safe"


class _XSTestPrompts(HubSourced, Dataset):
    """The XSTest prompts of one label, in file order."""

    splits = ("test",)
    license_note = LICENSE
    paper = PAPER
    Config = XSTestConfig
    #: Which prompts: ``safe`` or ``unsafe``.
    label: ClassVar[str]

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        kind = "benign" if self.label == "safe" else "harmful"
        out = []
        for record in self.read(self.config.hub_split, LOCAL_NAMES):
            prompt = text_field(record, "prompt", self.name, SCHEMA)
            if xstest_label(record, self.name) != self.label:
                continue
            ident = text_field(record, "id", self.name, SCHEMA, required=False).strip()
            meta = {
                "source": record.origin,
                # the same id in both components: the published row (or record) it came from
                "id": f"xstest:{ident or record.index}",
                "category": text_field(record, "type", self.name, SCHEMA, required=False),
                "label": self.label,
            }
            for extra in ("focus", "note"):
                value = text_field(record, extra, self.name, SCHEMA, required=False)
                if value:
                    meta[extra] = value
            out.append(Example(prompt, "", kind, meta=meta))  # type: ignore[arg-type]
        if not out:
            raise DataError(
                f"dataset {self.name!r}: {self.config.source} has no {self.label} prompts",
                hint="is source XSTest's xstest_prompts.csv (or a hub copy of it)?",
            )
        return out


class XSTest(_XSTestPrompts):
    """XSTest's 250 safe prompts for the over-refusal rate (the real set behind benign-eval).

    Prompt-only examples of kind ``benign`` in file order; a well-calibrated model answers them
    all. ``meta``: ``id`` (``xstest:<published id>``, or the record index when the copy has no
    ``id``), ``category`` (the prompt ``type``, e.g. ``homonyms``), ``label``, ``focus``, ``note``
    and ``source``.
    """

    name = "xstest"
    version = "1"
    role = "benign-eval"
    label = "safe"
    source = "XSTest v2 safe prompts (xstest_prompts.csv, label = safe; hub walledai/XSTest)"


class XSTestUnsafe(_XSTestPrompts):
    """XSTest's 200 unsafe contrast prompts, the harmful counterpart of xstest.

    Prompt-only examples of kind ``harmful`` in file order (types ``contrast_...``), for the
    Harmful Score next to XSTest's over-refusal rate. ``meta`` as for ``xstest``.
    """

    name = "xstest-unsafe"
    version = "1"
    role = "harmful-eval"
    label = "unsafe"
    source = "XSTest v2 contrast prompts (xstest_prompts.csv, label = unsafe; hub walledai/XSTest)"
