"""Context objects handed to components. New fields get defaults so old plugins keep working."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from hftguard.console import Reporter
    from hftguard.engine.steps import Batch, Params


@dataclass
class DataContext:
    """What a dataset's ``load`` may use."""

    seed: int = 0
    reporter: Reporter | None = None


@dataclass
class JudgeContext:
    """What a judge's ``judge`` may use."""

    device: str = "cpu"
    batch_size: int = 16
    reporter: Reporter | None = None


@dataclass
class StepContext:
    """What a defense's ``training_step`` may use.

    Attributes:
        step: Index of the optimizer step being computed (0-based).
        total_steps: Number of optimizer steps in the run.
        params: The trainable parameters as ``(name, tensor)`` pairs, in a fixed order.
        next_batch: ``next_batch("harmful")`` returns the next batch of an extra stream the defense
            declared in ``streams`` (an infinite, seeded, resumable iterator).
        loss_fn: ``loss_fn(model, batch)`` -> mean token cross-entropy on response tokens.
        reporter: Where to send info and warnings (components never print).
        output_dir: The run directory (for defense-specific artefacts).
        state: Scratch space kept for the run; use ``state_dict`` for what must survive a resume.
        world_size: Number of data-parallel processes (each holds rows ``rank::world_size`` of
            every batch; the loop averages the assembled ``.grad`` once per step).
        all_reduce_mean: ``all_reduce_mean(tensors)`` averages a list of tensors over the
            processes (identity in one process). For what a defense derives nonlinearly from a
            gradient inside a step (a perturbation direction, a norm, a weight), which must be
            global for the step to equal the global-batch step.
        rank: This process's index among the ``world_size`` processes (0 in one process). Only
            process 0 should write files into ``output_dir``.
        all_gather_rows: ``all_gather_rows(t)`` takes a tensor whose first dimension runs over
            this process's rows of a batch and returns it over the rows of the *global* batch,
            in the global batch's order, on every process (identity in one process; this
            process's rows are ``result[rank::world_size]``). For what a defense computes across
            the rows of a batch — a softmax over the batch, a batch statistic — which must
            cover the global batch.
        stop_point: ``stop_point("what")`` raises :class:`hftguard.errors.StopRequested` once a
            stop was asked for (SIGTERM: hftguard.engine.stopping), and does nothing otherwise.
            For long work inside one step (EWC's Fisher over hundreds of batches before step 0),
            which a stop would otherwise wait for past a scheduler's grace period: call it
            between pieces of that work. The step in progress is dropped, and the run resumes
            from its last checkpoint. Work that changed the parameters or the optimizer must not
            call it after the change.
    """

    step: int
    total_steps: int
    params: Params
    next_batch: Callable[[str], Batch]
    loss_fn: Callable[[Any, Batch], torch.Tensor]
    reporter: Reporter | None = None
    output_dir: Path | None = None
    device: torch.device | None = None
    state: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    all_reduce_mean: Callable[[list[torch.Tensor]], list[torch.Tensor]] = field(
        default=lambda tensors: tensors
    )
    rank: int = 0
    all_gather_rows: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda rows: rows)
    stop_point: Callable[[str], None] = field(default=lambda what: None)

    # Data-parallel arithmetic, so that a step never multiplies or divides by world_size itself.
    # Each is the identity arithmetic in one process; tests/test_ddp.py runs them in two.

    def sum_over_processes(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the data-parallel processes (itself in one process)."""
        if self.world_size == 1:
            return list(tensors)
        return [t * self.world_size for t in self.all_reduce_mean(list(tensors))]

    def norm_over_processes(self, local: torch.Tensor) -> torch.Tensor:
        """The L2 norm of a quantity sharded over the processes by rows, from this process's
        0-d ``local`` norm of its share: sqrt(Σ_k local_k²). (Vaccine's norm of the attention
        outputs' gradient over the whole batch.)"""
        if self.world_size == 1:
            return local
        return self.sum_over_processes([local.pow(2).reshape(1)])[0].sqrt().reshape(())

    def own_rows(self, global_rows: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor over the global batch's rows (the inverse of
        ``all_gather_rows``): ``global_rows[rank::world_size]``."""
        return global_rows[self.rank :: self.world_size] if self.world_size > 1 else global_rows

    def sum_term(self, term: torch.Tensor) -> torch.Tensor:
        """A loss term that is this process's part of a sum over the global batch, scaled so that
        the loop's averaging of gradients over processes gives the gradient of the global sum
        (``term × world_size``; ``term`` in one process)."""
        return term * self.world_size if self.world_size > 1 else term

    def token_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """This process's term of a mean over the global batch's tokens.

        ``total`` is this process's sum over its tokens, ``count`` (0-d) its token count. In one
        process: ``total / max(count, 1)``. With W processes: ``total / mean_k(count_k)``, so
        that the loop's averaging of gradients over processes gives Σ_k total_k / Σ_k count_k,
        the mean that ``loss_fn`` takes over the global batch."""
        if self.world_size > 1:
            count = self.all_reduce_mean([count.reshape(1)])[0].reshape(())
        return total / count.clamp_min(1)


@dataclass
class PlanContext:
    """What a defense's ``plan`` may use: the run's budget, known before anything is written.

    Attributes:
        total_steps: Number of optimizer steps the run will take.
        batch_size: Examples per optimizer step (the global batch, over every process).
        steps_source: Where ``total_steps`` comes from, for error messages (e.g. ``max_steps=30``
            or ``samples=20, batch_size=8, epochs=1.0``).
        stage: ``"align"`` or ``"finetune"``.
        group_by_length: Whether batches are grouped by token length (``train.group_by_length``):
            samples of similar length share a batch instead of a random set.
    """

    total_steps: int
    batch_size: int = 1
    steps_source: str = ""
    stage: str = ""
    group_by_length: bool = False


@dataclass
class RepairContext:
    """What a repair defense's ``apply`` may use (``hftguard repair``).

    Attributes:
        adapter: The fine-tuning LoRA adapter directory to repair (the attacked model's last
            adapter; read it, never write it).
        underneath: The adapters merged under it, in order: with ``base`` they make the model the
            fine-tuning started from (the aligned model).
        base: The base model directory (the unaligned model).
        output_dir: The repair's run directory: write the repaired adapter (and any artefact)
            here.
        reporter: Where to send info and warnings (components never print).
        seed: The stage's seed, for a defense that samples.
        write_json: ``write_json(name, data)`` writes ``output_dir/name`` atomically.
        streams: The examples of each extra stream the defense declared in ``streams``
            (``{"harmful": [...]}``: the repair config's ``harmful`` data, train split), loaded
            and checked before the run directory exists.
        load_model: ``load_model()`` -> ``(model, tokenizer)``: the attacked model in eval mode
            on the stage's device, fp32, with ``underneath`` merged into ``base`` and ``adapter``
            attached as an unmerged PEFT LoRA adapter (its ``lora_A``/``lora_B`` modules are
            the fine-tuning update). For a defense that needs activations.
        batches: ``batches(name, batch_size, max_length)`` -> the stream ``name`` encoded with
            the stage's template, in order, as right-padded :class:`~hftguard.data.inputs.Batch`
            es on the stage's device (``attention_mask`` marks the real tokens).
    """

    adapter: Path
    underneath: list[str]
    base: str
    output_dir: Path
    reporter: Reporter | None = None
    seed: int = 0
    write_json: Callable[[str, Any], None] = field(default=lambda name, data: None)
    streams: dict[str, list[Any]] = field(default_factory=dict)
    load_model: Callable[[], tuple[Any, Any]] = field(default=lambda: _no_model())
    batches: Callable[[str, int, int], list[Batch]] = field(
        default=lambda name, batch_size, max_length: _no_model()
    )


def _no_model() -> Any:
    from hftguard.errors import HftguardError

    raise HftguardError(
        "This repair context has no model: it was built without the repair stage.",
        hint="Run repair defenses through `hftguard repair` (or give the context load_model).",
    )
