"""Analysis metrics of the papers during fine-tuning, on request (docs/configuration.md).

- **Alignment loss** f(θ_t): mean token cross-entropy of the refusal answers on a fixed probe of
  the alignment data (Lisa Fig. 2/4/5, Vaccine; Antibody evaluates it every epoch).
- **Harmful loss** h(θ_t): the same on held-out harmful attack samples, ones the user data did not
  contain (Booster Fig. 3; Antibody's "fine-tuning-harmful" eval set).
- **Harmful embedding drift** (HED, Vaccine): the mean over probe prompts of
  Σ_l ‖e_l^t(x) − e_l^0(x)‖₂, with e_l the output of decoder layer l's self-attention module on
  the alignment probe (harmful prompts with refusal answers), the Frobenius norm over that
  sample's real (non-padding) tokens,
  in fp32, against the model at the start of fine-tuning. Not squared (as Booster/Antibody's
  ``utils.py``; the Vaccine repo squares it), averaged over samples so the number does not grow
  with the probe size.
- **Per-sample gradient norms** ‖∇_θ ℓ(x_i, y_i)‖₂ over the trainable parameters, one backward per
  sample, for harmful and benign user samples at the start of fine-tuning (the Antibody claim: a
  flat alignment makes harmful samples' gradients small) and again at the end.

Written to ``analysis.jsonl`` (one row per probe step) and ``grad_norms.jsonl`` (one row per
sample and moment) in the fine-tuning run directory; ``hftguard report`` plots them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hftguard.data.inputs import Batch, Encoded, collate
from hftguard.engine.training import attention_modules, token_nll


@contextmanager
def attention_outputs(model: Any) -> Iterator[list[torch.Tensor]]:
    """Collect, in layer order, the output of every self-attention module during the forward."""
    captured: list[torch.Tensor] = []

    def hook(_m: Any, _inp: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        captured.append(out.detach().float())

    handles = [m.register_forward_hook(hook) for m in attention_modules(model)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def _batches(items: Sequence[Encoded], size: int, pad_id: int) -> Iterator[Batch]:
    for i in range(0, len(items), size):
        yield collate(items[i : i + size], pad_id)


def mean_loss(
    model: Any, items: Sequence[Encoded], pad_id: int, device: Any, batch_size: int = 8
) -> float | None:
    """Token-mean cross-entropy of the answers over all of ``items`` (None when empty)."""
    if not items:
        return None
    total = torch.zeros((), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for batch in _batches(items, batch_size, pad_id):
            nll, mask = token_nll(model, batch.to(device))
            total += nll.sum().double().cpu()
            tokens += mask.sum().double().cpu()
    return float(total / tokens.clamp_min(1))


def embeddings(
    model: Any, items: Sequence[Encoded], pad_id: int, device: Any, batch_size: int = 8
) -> list[list[torch.Tensor]]:
    """Per probe sample, per layer: the attention output on the sample's real tokens, [T_i, H]."""
    out: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for batch in _batches(items, batch_size, pad_id):
            batch = batch.to(device)
            with attention_outputs(model) as layers:
                model(**batch.model_inputs())
            lengths = batch.attention_mask.sum(dim=1).tolist()
            for i, n in enumerate(lengths):
                out.append([layer[i, : int(n)].cpu() for layer in layers])
    return out


def drift(start: list[list[torch.Tensor]], now: list[list[torch.Tensor]]) -> float | None:
    """HED: mean over samples of Σ_l ‖e_l^t − e_l^0‖_F (see the module docstring)."""
    if not start:
        return None
    per_sample = [
        sum(float(torch.linalg.vector_norm(b - a)) for a, b in zip(s0, s1, strict=True))
        for s0, s1 in zip(start, now, strict=True)
    ]
    return sum(per_sample) / len(per_sample)


def sample_grad_norms(
    model: Any,
    items: Sequence[Encoded],
    params: Sequence[tuple[str, Any]],
    pad_id: int,
    device: Any,
) -> list[float]:
    """‖∇_θ ℓ(x_i, y_i)‖₂ over the trainable parameters, one sample at a time. Leaves ``.grad``
    as it found it (None), so it can run between training steps."""
    tensors = [p for _, p in params]
    norms = []
    for item in items:
        batch = collate([item], pad_id).to(device)
        nll, mask = token_nll(model, batch)
        loss = nll.sum() / mask.sum().clamp_min(1)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        sq = sum(g.double().pow(2).sum() for g in grads if g is not None)
        norms.append(float(torch.as_tensor(sq).sqrt()))
    return norms


class FinetuneProbe:
    """Records the analysis metrics at chosen steps of a fine-tuning run.

    Call it with the number of optimizer steps done (0 = before the first step); it probes at 0,
    every ``every`` steps and at ``total``. The grad-norm distributions are taken at 0 and
    ``total``. The training loop calls it once before its first step (with 0, or with the step a
    resumed run restarts from) and after every step, before any checkpoint is saved, so a
    checkpoint at step k implies the probe rows up to k are written; on resume the rows after k
    are dropped and the step-0 embeddings are reloaded from ``analysis_hed_start.safetensors``.
    """

    def __init__(
        self,
        model: Any,
        *,
        alignment: Sequence[Encoded],
        harmful: Sequence[Encoded],
        user: Sequence[Encoded],
        params: Sequence[tuple[str, Any]],
        every: int,
        total: int,
        pad_id: int,
        device: Any,
        out_dir: Path,
    ) -> None:
        self.model, self.alignment, self.harmful, self.user = model, alignment, harmful, user
        self.params, self.every, self.total = params, every, total
        self.pad_id, self.device, self.out_dir = pad_id, device, out_dir
        self.start: list[list[torch.Tensor]] | None = None
        self.started = False

    def due(self, done: int) -> bool:
        return done == 0 or done == self.total or (self.every > 0 and done % self.every == 0)

    def __call__(self, done: int) -> None:
        if not self.started:  # the first call: step 0, or the step a resumed run restarts from
            self.started = True
            trim_logs(self.out_dir, done)
            if done > 0 and self._has_row(done):
                return  # probed before the interruption, with these very weights
        if not self.due(done):
            return
        was_training = self.model.training
        self.model.eval()
        try:
            self._probe(done)
        finally:
            self.model.train(was_training)

    def _probe(self, done: int) -> None:
        emb = embeddings(self.model, self.alignment, self.pad_id, self.device)
        if self.start is None:
            self.start = self._baseline(done, emb)
        row: dict[str, Any] = {
            "step": done,
            "alignment_loss": mean_loss(self.model, self.alignment, self.pad_id, self.device),
            "harmful_loss": mean_loss(self.model, self.harmful, self.pad_id, self.device),
            "hed": drift(self.start, emb),
        }
        _append(self.out_dir / "analysis.jsonl", row)
        if done in (0, self.total):
            norms = sample_grad_norms(self.model, self.user, self.params, self.pad_id, self.device)
            rows = [
                {"step": done, "harmful": item.is_harmful, "grad_norm": g}
                for item, g in zip(self.user, norms, strict=True)
            ]
            _append(self.out_dir / "grad_norms.jsonl", *rows)

    def _has_row(self, done: int) -> bool:
        path = self.out_dir / "analysis.jsonl"
        return path.exists() and any(
            json.loads(line)["step"] == done
            for line in path.read_text(encoding="utf-8").splitlines()
            if line
        )

    def _baseline(self, done: int, emb: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """The step-0 embeddings: computed now at step 0, or reloaded after a resume."""
        from safetensors.torch import load_file, save_file

        path = self.out_dir / "analysis_hed_start.safetensors"
        if done == 0:
            flat = {f"{i}.{j}": t.contiguous() for i, s in enumerate(emb) for j, t in enumerate(s)}
            save_file(flat, str(path))
            return emb
        if path.exists():
            flat = load_file(str(path))
            n_layers = len(emb[0]) if emb else 0
            return [[flat[f"{i}.{j}"] for j in range(n_layers)] for i in range(len(emb))]
        return emb  # no baseline saved (should not happen): drift is measured from here


def _append(path: Path, *rows: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def trim_logs(out_dir: Path, before: int) -> None:
    """On resume from a checkpoint at step ``before``, drop probe rows from after it (they are
    recomputed), keeping the files consistent with the resumed weights."""
    from hftguard.engine.checkpoints import trim_log

    for name in ("analysis.jsonl", "grad_norms.jsonl"):
        path = out_dir / name
        if path.exists():  # a torn last line (a crash while writing it) is dropped
            trim_log(path, lambda row: row.get("step", 0) <= before)


ProbeFn = Callable[[int], None]
