"""``strongreject``: the StrongREJECT forbidden prompts (Souly et al. 2024, arXiv 2402.10260).

Published schema (``strongreject_dataset/strongreject_dataset.csv`` in
github.com/alexandrasouly/strongreject, and the 60-prompt ``strongreject_small_dataset.csv`` beside
it): columns ``category, source, forbidden_prompt``; ``source`` says where a prompt was collected
(written for StrongREJECT, or taken from an earlier set). The hub copy ``walledai/StrongREJECT``
(licence tag MIT) has one split, ``train``, with columns ``prompt``, ``category`` and ``source``.

The record's ``source`` column is kept as ``meta["prompt_source"]``: ``meta["source"]`` is, as for
every hftguard dataset, the file or hub split the record was read from.

Sources checked for the schema: the repository's file names and CSV header as read by public
loaders of it, and the hub card and file tree of ``walledai/StrongREJECT``. No StrongREJECT data
ships with hftguard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hftguard.builtins.datasets._papers import SOURCE_HELP, HubSourced
from hftguard.builtins.datasets._text import check_split
from hftguard.components import Dataset
from hftguard.data.hub import SourceRecord, text_field
from hftguard.errors import DataError
from hftguard.records import Example

if TYPE_CHECKING:
    from hftguard.context import DataContext

HUB_ID = "walledai/StrongREJECT"
HUB_SPLIT = "train"
#: Columns of the published CSV.
SCHEMA = ("category", "source", "forbidden_prompt")
#: Columns of the hub copy.
HUB_SCHEMA = ("prompt", "category", "source")
#: The published file in a local directory: a copy of its directory, or of the repository.
LOCAL_NAMES = ("strongreject_dataset.csv", "strongreject_dataset/strongreject_dataset.csv")
LICENSE = "StrongREJECT prompts are MIT-licensed (the StrongREJECT repository; hub tag mit)"
PAPER = (
    "StrongREJECT (Souly et al. 2024, arXiv 2402.10260): 313 forbidden prompts in 6 categories "
    "(60 in the small set), a common harmful-prompt set for jailbreak and refusal evaluation"
)
_BOTH_SCHEMAS = (
    f"the published CSV ({', '.join(SCHEMA)}) or the hub copy {HUB_ID} ({', '.join(HUB_SCHEMA)})"
)


@dataclass
class StrongREJECTConfig:
    """Options of ``strongreject``."""

    source: str = field(
        default=HUB_ID,
        metadata={
            "help": f"{SOURCE_HELP} For the 60-prompt small set, give the path of "
            "strongreject_small_dataset.csv."
        },
    )


class StrongREJECT(HubSourced, Dataset):
    """StrongREJECT forbidden prompts (313; 60 in the small file) in file order, for HS.

    Prompt-only examples of kind ``harmful``. ``meta``: ``id`` (``strongreject:<record index>``),
    ``category``, ``prompt_source`` (the record's own ``source`` column: where the prompt was
    collected) and ``source`` (the file or hub split read).
    """

    name = "strongreject"
    version = "1"
    role = "harmful-eval"
    splits = ("test",)
    source = "StrongREJECT forbidden prompts (strongreject_dataset.csv; hub walledai/StrongREJECT)"
    paper = PAPER
    license_note = LICENSE
    Config = StrongREJECTConfig

    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        check_split(self.name, self.splits, split)
        return [self._example(record) for record in self.read(HUB_SPLIT, LOCAL_NAMES)]

    def _example(self, record: SourceRecord) -> Example:
        if "forbidden_prompt" in record:  # the published CSV
            prompt = text_field(record, "forbidden_prompt", self.name, SCHEMA)
            schema = SCHEMA
        elif "prompt" in record:  # the hub copy
            prompt = text_field(record, "prompt", self.name, HUB_SCHEMA)
            schema = HUB_SCHEMA
        else:
            raise DataError(
                f"{record.where}: neither a 'forbidden_prompt' nor a 'prompt' field",
                hint=f"dataset {self.name!r} reads {_BOTH_SCHEMAS}; is source the right file?",
            )
        meta = {
            "source": record.origin,
            "id": f"{self.name}:{record.index}",
            "category": text_field(record, "category", self.name, schema),
        }
        origin = text_field(record, "source", self.name, schema, required=False)
        if origin:
            meta["prompt_source"] = origin
        return Example(prompt, "", "harmful", meta=meta)
