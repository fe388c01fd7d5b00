"""Thin base classes for every kind of component (the plugin contract).

A component is a class with a kebab-case ``name``, a ``version`` (bump it when outputs change; it is
recorded in every run's manifest), a ``Config`` dataclass whose defaults are the paper's (each field
with ``metadata={"help": ...}``), an optional ``paper`` reference, and a docstring whose first
line is
the summary that ``hftguard plugins`` prints. The classes hold no shared behaviour: the host's
``training``, ``data`` and ``generation`` modules provide the building blocks components call.

Nothing here imports torch: ``hftguard plugins`` and config validation must stay fast.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    from hftguard.context import DataContext, JudgeContext, PlanContext, RepairContext, StepContext
    from hftguard.engine.steps import Batch
    from hftguard.records import Example, Verdict


@dataclass
class NoOptions:
    """The empty options dataclass for components without options."""


class Component:
    """Attributes shared by every component kind."""

    name: ClassVar[str]
    kind: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = NoOptions
    paper: ClassVar[str | None] = None
    #: Licence restriction shown by ``hftguard plugins`` and recorded with results (e.g.
    #: non-commercial).
    license_note: ClassVar[str | None] = None

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Defense(Component):
    """A training-time defense: a step function run by the host's one training loop.

    ``training_step`` computes this step's gradient into the trainable parameters' ``.grad`` (with
    one or several forward/backward passes) and returns scalar metrics to log: numbers or 0-d
    tensors (the loop copies a step's tensors to the host at once, so a step need not wait for the
    device). The loop owns everything else: batching, optimizer, clipping, schedule, precision,
    checkpoints, progress.
    """

    stage: ClassVar[str]
    #: Extra data streams the defense draws from besides the main batch: ``"alignment"``,
    #: ``"harmful"``.
    streams: ClassVar[tuple[str, ...]] = ()
    #: If True every batch (main and streams) carries a ``refusal`` view: same prompts, refusal
    #: answers.
    refusal_view: ClassVar[bool] = False
    #: Number of forward+backward passes per step, the theoretical cost relative to SFT
    #: (benchmarks).
    passes: ClassVar[float] = 1.0
    #: What ``passes`` leaves out of a step's cost, in words, if anything (e.g. extra LM-head
    #: projections): ``hftguard run --dry-run`` says it beside an estimate scaled by ``passes``.
    passes_note: ClassVar[str] = ""

    def plan(self, ctx: PlanContext) -> None:
        """Check that the defense can run as intended in this run's budget.

        Called before training, and before the run directory is created whenever the number of
        steps is known from the config (always in ``attack-finetune``; in ``align`` when
        ``max_steps`` is set, otherwise once the data is loaded), also by ``hftguard validate``
        and ``hftguard run --dry-run``. A defense whose schedule would silently degenerate in
        ``ctx.total_steps`` steps (a phase that never starts, a weighting that is constant)
        raises :class:`~hftguard.errors.ConfigError` naming the numbers, with a hint. Only where
        an option explicitly asks for it may it adapt itself instead, and then report what it
        will run through :meth:`effective_options`.
        """

    def effective_options(self) -> dict[str, Any]:
        """What :meth:`plan` changed, as run (recorded in the manifest under
        ``components.defense.effective``); empty when the defense runs as configured."""
        return {}

    def setup(self, ctx: StepContext) -> None:
        """Called once before the first step (and again after a resume, with restored state)."""

    @abc.abstractmethod
    def training_step(self, model: Any, batch: Batch, ctx: StepContext) -> dict[str, Any]:
        """Write this step's gradient into ``.grad`` of the trainable parameters; return metrics
        (numbers or 0-d tensors)."""

    def state_dict(self) -> dict[str, Any]:
        """Defense state saved in checkpoints (e.g. an EMA); JSON-serialisable or tensors."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class AlignmentDefense(Defense):
    """Base class of alignment-stage defenses (the provider aligns the base model)."""

    kind = "alignment-defense"
    stage = "align"
    #: How the fine-tuning stage should treat this stage's LoRA adapter when the user does not say:
    #: ``"continue"`` (single LoRA: keep training the same adapter) or ``"merge"`` (double LoRA).
    finetune_lora: ClassVar[str] = "merge"


class FinetuneDefense(Defense):
    """Base class of fine-tuning-stage defenses (the provider fine-tunes on user data)."""

    kind = "finetune-defense"
    stage = "finetune"

    def appended_user_data(self, streams: Mapping[str, Sequence[Example]]) -> list[Example]:
        """Examples to train on besides the user data, e.g. safety demonstrations mixed in
        (docs/components/mixing.md); none by default.

        Called once by ``attack-finetune`` when the data is loaded, with the stage's extra
        streams (those the defense declares in ``streams``: ``"alignment"`` is the
        ``alignment_data`` set). The examples join the main data the loop batches from; the user
        data's composition (n, p) stays as asked, and the manifest records the addition under
        ``data.main.appended``.
        """
        return []


class RepairDefense(Component):
    """Base class of post-fine-tuning repair defenses (the provider repairs the fine-tuned model).

    Not training: ``apply(ctx)`` reads the fine-tuned model's artefacts from a
    :class:`~hftguard.context.RepairContext` (the fine-tuning LoRA adapter, the adapters and base
    model under it), writes its repaired adapter into ``ctx.output_dir`` and returns
    ``{"adapter": path, "metrics": {name: number}}``; the stage replaces the fine-tuning adapter
    with that one in the model recipe (``hftguard repair``, docs/components/safelora.md).
    """

    kind = "repair-defense"
    stage: ClassVar[str] = "repair"
    #: Data the defense needs, loaded by the stage into ``ctx.streams``: ``"harmful"`` (the
    #: repair config's ``harmful`` data, its train split). () = none (SafeLoRA).
    streams: ClassVar[tuple[str, ...]] = ()
    #: Whether the defense repairs towards the alignment update, so that the attacked model must
    #: have been fine-tuned from an aligned model (SafeLoRA); the stage refuses others first.
    needs_alignment: ClassVar[bool] = True

    @abc.abstractmethod
    def apply(self, ctx: RepairContext) -> dict[str, Any]:
        """Repair the model; return ``{"adapter": PATH, "metrics": {...}}``, PATH inside
        ``ctx.output_dir``."""


class Dataset(Component):
    """A source of :class:`~hftguard.records.Example` records.

    ``role`` says what the data is for: ``alignment`` (harmful prompt -> refusal), ``harmful``
    (harmful prompt -> compliant answer), ``task`` (benign task with a scorer), ``harmful-eval``
    (held-out harmful prompts for HS) or ``benign-eval`` (benign prompts for over-refusal).
    """

    kind = "dataset"
    role: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train",)
    #: One-line note on what the data stands in for / where it comes from.
    source: ClassVar[str] = ""

    @abc.abstractmethod
    def load(self, split: str, ctx: DataContext) -> Sequence[Example]:
        """Return the examples of ``split`` in a deterministic order."""


class TaskDataset(Dataset):
    """A benign fine-tuning task with an accuracy rule (Finetune Accuracy)."""

    role = "task"
    splits = ("train", "test")
    #: Decoding budget the task needs when evaluated.
    max_new_tokens: ClassVar[int] = 32

    @abc.abstractmethod
    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[bool] | None:
        """Return, per example, whether the completion is correct.

        ``None`` means the task cannot be scored offline (AlpacaEval's win rate needs an external
        annotator): Finetune Accuracy is then reported as null and the generations are written
        for the external scorer.
        """


class Judge(Component):
    """Decides whether responses to harmful prompts are harmful (and refusals / degenerate)."""

    kind = "judge"
    #: True if the judge labels refusals as ``refusal`` (so it can measure over-refusal on benign
    #: prompts); moderation classifiers only say harmful or ``safe`` and set this to False.
    detects_refusal: ClassVar[bool] = True

    @abc.abstractmethod
    def judge(
        self, prompts: Sequence[str], responses: Sequence[str], ctx: JudgeContext
    ) -> list[Verdict]:
        """Return one verdict per (prompt, response) pair, in order."""


class ReportSink(Component):
    """Writes a finished evaluation somewhere else as well (a file format, a tracker)."""

    kind = "report-sink"

    @abc.abstractmethod
    def write(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        """Write ``metrics`` (the content of metrics.json) for the run in ``run_dir``."""


class Tracker(Component):
    """Streams a run to an experiment tracker (TensorBoard, W&B, MLflow, a JSON-lines file).

    Selected with ``--report-to NAME`` (``report_to`` in a config). The host calls, on process 0
    only: ``start`` once, at a stage's first step (or at the end of an evaluation), with the
    stage's resolved config; ``log_metrics`` after every optimizer step with the values the
    training loop logs to ``log.jsonl`` (loss, lr, grad_norm and each defense's diagnostics, as
    Python numbers); ``log_final`` with an evaluation's headline metrics (``metrics.json``); and
    ``close`` at the end of the stage, also when it fails. A tracker whose method raises is
    warned about and dropped; the run goes on.
    """

    kind = "tracker"

    def check(self) -> None:
        """Raise :class:`hftguard.ConfigError` (with a hint) if the tracker cannot run here, e.g.
        its package is not installed. Called before the stage starts."""

    @abc.abstractmethod
    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        """Begin tracking the stage whose run directory is ``run_dir``; ``config`` is its
        resolved config (as recorded in its manifest)."""

    @abc.abstractmethod
    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        """One training step's metrics (the record of ``log.jsonl`` without ``step``)."""

    def log_final(self, metrics: dict[str, Any]) -> None:
        """An evaluation's headline metrics (the content of ``metrics.json``)."""

    def close(self) -> None:
        """Flush and release whatever ``start`` opened."""


#: Kinds in the order ``hftguard plugins`` shows them, with their registration hook.
KIND_HOOKS: dict[str, str] = {
    "alignment-defense": "hftguard_register_alignment_defenses",
    "finetune-defense": "hftguard_register_finetune_defenses",
    "repair-defense": "hftguard_register_repair_defenses",
    "dataset": "hftguard_register_datasets",
    "judge": "hftguard_register_judges",
    "report-sink": "hftguard_register_report_sinks",
    "tracker": "hftguard_register_trackers",
}
KIND_BASES: dict[str, type[Component]] = {
    "alignment-defense": AlignmentDefense,
    "finetune-defense": FinetuneDefense,
    "repair-defense": RepairDefense,
    "dataset": Dataset,
    "judge": Judge,
    "report-sink": ReportSink,
    "tracker": Tracker,
}
