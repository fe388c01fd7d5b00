"""Reading BeaverTails QA records (``PKU-Alignment/BeaverTails``), shared by its components.

Published schema (dataset card of ``PKU-Alignment/BeaverTails``, splits ``30k_train``,
``30k_test``, ``330k_train``, ``330k_test``): ``prompt`` (str), ``response`` (str), ``category``
(dict of the 14 harm category names -> bool) and ``is_safe`` (bool). A prompt occurs once per
answer it was given, so the same prompt may appear in several records.
"""

from __future__ import annotations

from hftguard.builtins.datasets._papers import HubSourced, category_text
from hftguard.data.hub import SourceRecord, bool_field, text_field
from hftguard.records import Example

SCHEMA = ("prompt", "response", "category", "is_safe")


def beavertails_examples(
    component: HubSourced, hub_split: str, *, safe: bool, kind: str, with_response: bool = True
) -> list[Example]:
    """The records of ``hub_split`` whose ``is_safe`` equals ``safe``, in file order."""
    out = []
    for record in component.read(hub_split):
        if bool_field(record, "is_safe", component.name, SCHEMA) != safe:
            continue
        out.append(_example(component.name, record, kind, with_response))
    return out


def _example(dataset: str, record: SourceRecord, kind: str, with_response: bool) -> Example:
    prompt = text_field(record, "prompt", dataset, SCHEMA)
    response = text_field(record, "response", dataset, SCHEMA) if with_response else ""
    return Example(
        prompt,
        response,
        kind,  # type: ignore[arg-type]  # one of the record kinds, chosen by the component
        meta={
            "source": record.origin,
            "id": f"{dataset}:{record.index}",
            "category": category_text(record.get("category")),
        },
    )
