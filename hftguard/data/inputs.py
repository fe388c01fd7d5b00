"""Examples -> model inputs: prompt templates, poison mixing, tokenisation with response-only
labels,
and collation into :class:`Batch` objects.

Prompt formats (docs/configuration.md, "Prompt templates"): ``chat`` renders the model's own chat
template (one user turn: instruction, then the input after a blank line); ``alpaca`` is the Alpaca
template with or without an input, ending in ``"### Response:\\n"`` as in the Booster/Antibody code;
``alpaca-no-newline`` ends at ``"### Response:"`` as in the Vaccine/Lisa code (training and
evaluation). The target is the response followed by the end-of-sequence token; prompt tokens get
label -100 so the loss is on the response only.

Prompts are tokenised as the papers' code does, ``tokenizer(prompt)`` with the tokenizer's default
special tokens: a tokenizer that prepends a BOS token (Llama-2's) gets one at the start of every
prompt, in training, scoring and generation alike (:func:`prompt_ids`), but not a second one when a
chat template already rendered it, and never a trailing EOS. Answers get no BOS of their own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftguard.data.refusals import refusal_for
from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

if TYPE_CHECKING:
    import torch

    from hftguard.context import DataContext
    from hftguard.registry import Registry

IGNORE_INDEX = -100
_TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".ndjson")
DATA_SUFFIXES = (
    *_TEXT_SUFFIXES,
    ".parquet",
    *(f"{fmt}{z}" for fmt in _TEXT_SUFFIXES for z in (".xz", ".gz")),
)

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ROLE_KIND = {
    "alignment": "refusal",
    "harmful": "harmful",
    "task": "benign",
    "harmful-eval": "harmful",
    "benign-eval": "benign",
    "instructions": "benign",
}


def format_prompt(ex: Example, tokenizer: Any, template: str) -> str:
    """The text the model sees before its answer."""
    if template in ("alpaca", "alpaca-no-newline"):
        if ex.input:
            text = ALPACA_WITH_INPUT.format(instruction=ex.prompt, input=ex.input)
        else:
            text = ALPACA_NO_INPUT.format(instruction=ex.prompt)
        return text[:-1] if template == "alpaca-no-newline" else text
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "The model's tokenizer has no chat template.",
                hint="Use --set template=alpaca for base (non-chat) models.",
            )
        content = f"{ex.prompt}\n\n{ex.input}" if ex.input else ex.prompt
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    raise ConfigError(
        f"Unknown template '{template}'.", hint="Use 'chat', 'alpaca' or 'alpaca-no-newline'."
    )


@dataclass
class Encoded:
    """One tokenised example: ids and labels (-100 on the prompt)."""

    input_ids: list[int]
    labels: list[int]
    is_harmful: bool
    refusal: Encoded | None = None


def bos_ids(tokenizer: Any) -> list[int]:
    """The ids ``tokenizer(text)`` puts before the text by default: ``[BOS]`` for a tokenizer that
    adds one (Llama-2: ``add_bos_token=True``), ``[]`` for one that does not (SmolLM2's).

    Read off the tokenizer itself (with and without its default special tokens), so whatever its
    post-processor does is what counts; a trailing EOS it may also add is ignored."""
    with_specials = list(tokenizer("x")["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    if not plain:
        return []
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return with_specials[:start]
    bos = getattr(tokenizer, "bos_token_id", None)  # the specials changed how the text split
    return [bos] if bos is not None and with_specials[:1] == [bos] != plain[:1] else []


def prompt_ids(tokenizer: Any, text: str, bos: list[int] | None = None) -> list[int]:
    """Token ids of a formatted prompt as the model's own code feeds it: :func:`bos_ids` first,
    unless the text already starts with them (a chat template that renders the BOS token), then
    the text. Never an EOS. ``bos``: :func:`bos_ids` of ``tokenizer``, when already known."""
    head = bos_ids(tokenizer) if bos is None else bos
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if head and ids[: len(head)] != head:
        ids = head + ids
    return ids


def bos_prepended(tokenizer: Any, texts: Sequence[str]) -> bool:
    """Whether :func:`prompt_ids` puts a BOS before any of ``texts`` that the text does not have.

    Caches of generated answers key on it, so answers generated before prompts got their BOS are
    never served for them, while the keys of tokenizers without a BOS stay as they were."""
    head = bos_ids(tokenizer)
    return bool(head) and any(
        tokenizer(t, add_special_tokens=False)["input_ids"][: len(head)] != head for t in texts
    )


def encode(
    ex: Example, tokenizer: Any, template: str, max_length: int, bos: list[int] | None = None
) -> Encoded:
    """Tokenise prompt and response separately so the label mask falls exactly on the answer.

    The prompt starts with the tokenizer's BOS when it adds one (:func:`prompt_ids`), which is
    masked like the rest of the prompt; the answer is the response's tokens and the EOS token.
    ``bos``: :func:`bos_ids` of ``tokenizer``, when already known."""
    head = bos_ids(tokenizer) if bos is None else bos
    prompt = prompt_ids(tokenizer, format_prompt(ex, tokenizer, template), head)
    answer = tokenizer(ex.response, add_special_tokens=False)["input_ids"]  # no BOS of its own
    answer = [*answer, tokenizer.eos_token_id]
    # Keep at least a few answer tokens: cut the prompt from the left if it is too long, after its
    # leading BOS, which stays.
    keep_answer = min(len(answer), max(1, max_length // 4))
    if len(prompt) + keep_answer > max_length:
        room = max(0, max_length - keep_answer)
        lead = min(len(head) if head and prompt[: len(head)] == head else 0, room)
        tail = room - lead
        prompt = prompt[:lead] + (prompt[len(prompt) - tail :] if tail else [])
    answer = answer[: max_length - len(prompt)]
    return Encoded(
        input_ids=prompt + answer,
        labels=[IGNORE_INDEX] * len(prompt) + answer,
        is_harmful=ex.kind == "harmful",
    )


def encode_all(
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    max_length: int,
    refusal_view: bool = False,
) -> list[Encoded]:
    """Encode examples; with ``refusal_view`` each also carries its refusal view (same prompt)."""
    out = []
    bos = bos_ids(tokenizer)
    for i, ex in enumerate(examples):
        enc = encode(ex, tokenizer, template, max_length, bos)
        if refusal_view:
            enc.refusal = encode(refusal_example(ex, i), tokenizer, template, max_length, bos)
        out.append(enc)
    return out


def refusal_example(ex: Example, index: int) -> Example:
    """The refusal view of an example: same prompt, refusal template ``index mod 100``."""
    return ex.with_response(refusal_for(index), kind="refusal")


@dataclass
class Batch:
    """A padded batch (right padding) and, optionally, its refusal view."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    is_harmful: torch.Tensor
    refusal: Batch | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: Any) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.is_harmful.to(device),
            self.refusal.to(device) if self.refusal is not None else None,
            self.meta,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-sequence token
    (padding is masked out of attention and of every loss, so which id fills it changes nothing).
    A tokenizer with neither is an error: there is nothing to pad with."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise DataError(
        "The tokenizer has neither a pad token nor an end-of-sequence token to pad batches with.",
        hint="Use a model whose tokenizer defines eos_token (tokenizer_config.json), or set its "
        "pad_token there.",
    )


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    harmful = torch.tensor([e.is_harmful for e in items], dtype=torch.bool)
    refusal = None
    if all(e.refusal is not None for e in items) and items and items[0].refusal is not None:
        refusal = collate([e.refusal for e in items if e.refusal is not None], pad_id)
    return Batch(ids, mask, labels, harmful, refusal)


# ---------------------------------------------------------------------------------------------
# Loading and mixing


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` is data the stage reads itself, not a registered dataset component: a
    local data file, or a hub dataset by id (``hf:ID[:CONFIG][:SPLIT]``)."""
    from hftguard.data.hub import is_hf_spec

    return is_hf_spec(spec) or spec.lower().endswith(DATA_SUFFIXES) or Path(spec).is_file()


#: The dataset arguments of the stage configs a ``data_fields`` entry may name.
DATA_KEYS: tuple[str, ...] = (
    "data",
    "harmful",
    "retain",
    "task",
    "alignment_data",
    "harmful_prompts",
    "benign_prompts",
)


def fields_for(cfg: Any, key: str) -> dict[str, Any] | None:
    """The ``data_fields`` entry of ``cfg`` for its dataset argument ``key`` (or None)."""
    table = getattr(cfg, "data_fields", None) or {}
    value = table.get(key)
    return None if value in (None, "", {}) else {"_where": f"data_fields.{key}", "_value": value}


def check_data_fields(cfg: Any) -> None:
    """Every ``data_fields`` entry names a dataset argument of ``cfg`` and is a valid mapping.

    Eval's file tasks (``tasks``) are keyed by the task argument itself
    (``data_fields."hf:org/qa:test"``), and every eval entry must name data eval reads itself
    (a file or ``hf:ID``): eval loads all its data, so a mapping for a built-in dataset fails
    here, before generation, instead of at load time."""
    from hftguard.data.files import field_mapping

    table = getattr(cfg, "data_fields", None) or {}
    keys = [k for k in DATA_KEYS if hasattr(cfg, k)]
    is_eval = hasattr(cfg, "tasks")  # eval: file tasks keyed by their argument
    keys += [t for t in getattr(cfg, "tasks", None) or [] if is_file_spec(t) and t not in keys]
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(
                f"data_fields.{key}: {key!r} is not a dataset argument of this stage",
                hint=f"its dataset arguments: {', '.join(keys)}"
                + (" (a file or hf: task is keyed by the task argument itself)" if is_eval else ""),
            )
        mapping, system = field_mapping(value, f"data_fields.{key}")
        spec = getattr(cfg, key, key) if key in DATA_KEYS else key
        if is_eval and (mapping or system) and spec and not is_file_spec(spec):
            raise ConfigError(
                f"data_fields.{key}: '{spec}' is a built-in dataset, which reads its own fields; "
                "a field mapping applies to files and hf: datasets only.",
                hint=f"remove data_fields.{key}, or point {key} at a file or hf:ID.",
            )


def load_data(
    spec: str,
    split: str,
    *,
    kind: str,
    fields: dict[str, Any] | None = None,
    require_response: bool = True,
) -> list[Example]:
    """Examples of ``kind`` from data a stage reads itself (:func:`is_file_spec`): a local file
    (read whole) or a hub dataset ``hf:ID[:CONFIG][:SPLIT]`` (``split`` when the spec names
    none). ``fields``: as for :func:`load_examples`. A hub dataset's examples carry
    ``meta["hf"]`` (:func:`hub_sources`)."""
    from hftguard.data.files import examples_from_records, field_mapping, load_examples_file
    from hftguard.data.hub import is_hf_spec, load_hub_spec, parse_hf_spec

    where = "fields"
    value: Any = fields
    if fields and "_where" in fields:
        where, value = fields["_where"], fields["_value"]
    mapping, system = field_mapping(value, where)
    if is_hf_spec(spec):
        hub = parse_hf_spec(spec)
        records, provenance = load_hub_spec(hub, split)
        return examples_from_records(
            ((r.where.rpartition(": ")[2] or r.where, r.index + 1, dict(r)) for r in records),
            source=f"hf:{hub.id} [{provenance['split']}]",
            name=f"{hub.id}:{provenance['split']}",
            kind=kind,
            fields=mapping,
            require_response=require_response,
            system_prompt=system,
            meta={"hf": provenance},
        )
    return load_examples_file(
        spec,
        kind=kind,
        fields=mapping,
        require_response=require_response,
        system_prompt=system,
    )


def load_examples(
    spec: str,
    role: str,
    split: str,
    registry: Registry,
    ctx: DataContext,
    limit: int = 0,
    fields: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> list[Example]:
    """Load ``spec`` (a dataset name, a local file or a hub dataset ``hf:ID[:CONFIG][:SPLIT]``)
    for ``role``; ``limit`` > 0 takes the first N. ``options`` is a stage's ``dataset_options``
    ({dataset name: {option: value}}). ``fields`` maps our field names to the data's columns
    (``{"prompt": "goal"}``), or is :func:`fields_for`'s ``data_fields`` entry (which may also
    hold ``system_prompt``); files and hub datasets only.

    A hub dataset's examples carry ``meta["hf"]``: its id, configuration, split, revision and
    content sha256 (the stages record it in the manifest's ``data`` sources)."""
    from hftguard.data.files import field_mapping

    where = "fields"
    value: Any = fields
    if fields and "_where" in fields:
        where, value = fields["_where"], fields["_value"]
    mapping, system = field_mapping(value, where)
    require_response = role not in ("harmful-eval", "benign-eval", "instructions")
    if is_file_spec(spec):
        examples = load_data(
            spec,
            split,
            kind=ROLE_KIND[role],
            fields=fields,
            require_response=require_response,
        )
    else:
        if mapping or system:
            raise ConfigError(
                f"{where}: '{spec}' is a built-in dataset, which reads its own fields; a field "
                "mapping applies to files and hf: datasets only.",
                hint=f"remove {where}, or point the dataset argument at a file or hf:ID.",
            )
        info = registry.dataset(spec, role)
        if split not in info.cls.splits:
            raise ConfigError(
                f"Dataset '{spec}' has no split '{split}'.",
                hint=f"Its splits: {', '.join(info.cls.splits)}.",
            )
        examples = list(dataset_instance(spec, registry, options).load(split, ctx))
    if limit and limit > len(examples):
        raise DataError(
            f"{limit} examples requested from '{spec}' ({split}), but it has {len(examples)}.",
            hint=f"Ask for at most {len(examples)}, or give a larger dataset.",
        )
    return examples[:limit] if limit else examples


def hub_sources(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """The distinct ``meta["hf"]`` provenance records of ``examples`` (hub datasets), in order."""
    seen: list[dict[str, Any]] = []
    for ex in examples:
        hf = ex.meta.get("hf")
        if hf is not None and all(hf is not s and hf != s for s in seen):
            seen.append(hf)
    return seen


def dataset_instance(name: str, registry: Registry, options: dict[str, Any] | None) -> Any:
    """The dataset component ``name`` built with its entry of a stage's ``dataset_options``."""
    return registry.instantiate(
        "dataset", name, (options or {}).get(name, {}), f"dataset_options.{name}"
    )


@dataclass
class Mixture:
    """The poisoned user dataset and exactly what went into it."""

    examples: list[Example]
    n: int
    p: float
    n_harmful: int
    n_benign: int
    harmful_ids: list[str]
    benign_ids: list[str]

    def composition(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "harmful_ratio": self.p,
            "n_harmful": self.n_harmful,
            "n_benign": self.n_benign,
            "harmful_ids": self.harmful_ids,
            "benign_ids": self.benign_ids,
        }


def mix_poison(
    benign: Sequence[Example], harmful: Sequence[Example], n: int, p: float, seed: int
) -> Mixture:
    """User data: ``round(p*n)`` harmful + the rest benign, sampled and shuffled with ``seed``."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(
            f"harmful_ratio = {p} is outside [0, 1].",
            hint="Use a fraction, e.g. --harmful-ratio 0.1 for 10%.",
        )
    if n < 1:
        raise ConfigError(f"samples = {n}; the user dataset needs at least one example.")
    n_h = round(p * n)
    n_b = n - n_h
    if n_h > len(harmful):
        raise DataError(
            f"{n_h} harmful examples needed (p={p}, n={n}) but only {len(harmful)} are available.",
            hint="Lower --samples or --harmful-ratio, or add data.",
        )
    if n_b > len(benign):
        raise DataError(
            f"{n_b} benign examples needed (p={p}, n={n}) but the task has only {len(benign)}.",
            hint="Lower --samples, or give a larger task dataset.",
        )
    rng = random.Random(seed)
    h = rng.sample(list(harmful), n_h)
    b = rng.sample(list(benign), n_b)
    h = [ex if ex.kind == "harmful" else ex.with_response(ex.response, "harmful") for ex in h]
    mixed = h + b
    rng.shuffle(mixed)
    return Mixture(mixed, n, p, n_h, n_b, [_id(e) for e in h], [_id(e) for e in b])


def _id(ex: Example) -> str:
    return str(ex.meta.get("id", ex.prompt[:40]))


def data_hash(examples: Sequence[Example]) -> str:
    from hftguard.runs import sha256_text

    return sha256_text(f"{e.prompt}\x1f{e.input}\x1f{e.response}\x1f{e.kind}" for e in examples)
