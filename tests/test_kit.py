"""The public defense kit (#17): every exported helper is documented in docs/plugins/kit.md, the
built-ins import helpers from the kit only, and the step context's data-parallel arithmetic gives
the global-batch numbers (two processes simulated in one: a fake all-reduce over two shards)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from hftguard.context import StepContext
from hftguard.engine import steps

ROOT = Path(__file__).resolve().parents[1]
KIT_DOC = ROOT / "docs" / "plugins" / "kit.md"
CTX_METHODS = ["sum_over_processes", "norm_over_processes", "own_rows", "sum_term", "token_mean"]
CTX_DOCUMENTED = ["all_reduce_mean", "all_gather_rows", "stop_point", *CTX_METHODS]


def _headings() -> list[str]:
    return re.findall(r"^### `([^`]+)`\s*$", KIT_DOC.read_text(), re.M)


def test_every_kit_name_has_exactly_one_section_and_no_section_names_nothing():
    expected = sorted([*steps.__all__, *(f"ctx.{m}" for m in CTX_DOCUMENTED)])
    assert sorted(_headings()) == expected


def test_the_kit_exports_what_it_defines():
    for name in steps.__all__:
        assert hasattr(steps, name), name


def test_builtin_defenses_import_helpers_from_the_kit_only():
    """Not from hftguard.engine.training (whose re-exports are for older plugins) or the data
    module: one door for built-ins and plugins alike."""
    bad = []
    for path in sorted((ROOT / "hftguard" / "builtins" / "defenses").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in {
                "hftguard.engine.training",
                "hftguard.data.inputs",
                "hftguard.config",
            }:
                bad.append(f"{path.name}:{node.lineno}: from {node.module}")
    assert not bad, bad


class _TwoShards:
    """Two processes in one: ``ctx(k, peer_values)`` is process k's context, whose all-reduce
    averages its tensors with ``peer_values`` (the other process's, given by the test)."""

    def ctx(self, rank: int, peer_values: list[torch.Tensor] | None) -> StepContext:
        def mean(tensors):
            others = peer_values if peer_values is not None else tensors
            return [(a + b) / 2 for a, b in zip(tensors, others, strict=True)]

        return StepContext(
            step=0,
            total_steps=1,
            params=[],
            next_batch=lambda name: None,
            loss_fn=lambda m, b: None,
            world_size=2,
            rank=rank,
            all_reduce_mean=mean,
        )


def test_one_process_arithmetic_is_the_plain_arithmetic():
    ctx = StepContext(step=0, total_steps=1, params=[], next_batch=None, loss_fn=None)
    x = torch.tensor(3.0)
    assert ctx.sum_over_processes([x])[0] is x
    assert ctx.norm_over_processes(x) is x
    assert ctx.sum_term(x) is x
    rows = torch.arange(6.0)
    assert ctx.own_rows(rows) is rows
    assert ctx.token_mean(torch.tensor(6.0), torch.tensor(0.0)) == 6.0  # an empty count is 1


def test_two_process_arithmetic_gives_the_global_numbers():
    fake = _TwoShards()
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([12.0])  # each process's share of one vector
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm0 = fake.ctx(0, [nb.pow(2).reshape(1)]).norm_over_processes(na)
    norm1 = fake.ctx(1, [na.pow(2).reshape(1)]).norm_over_processes(nb)
    assert norm0.shape == () and float(norm0) == pytest.approx(13.0) == float(norm1)

    s = fake.ctx(0, [torch.tensor(5.0)]).sum_over_processes([torch.tensor(2.0)])[0]
    assert float(s) == pytest.approx(7.0)

    # token mean: process 0 holds 6 tokens with loss sum 12, process 1 holds 2 with sum 8.
    # Averaging the two processes' terms must give the global mean (12 + 8) / (6 + 2) = 2.5.
    t0 = fake.ctx(0, [torch.tensor([2.0])]).token_mean(torch.tensor(12.0), torch.tensor(6.0))
    t1 = fake.ctx(1, [torch.tensor([6.0])]).token_mean(torch.tensor(8.0), torch.tensor(2.0))
    assert float((t0 + t1) / 2) == pytest.approx(2.5)

    # sum_term: averaging the scaled terms gives the sum
    assert float((fake.ctx(0, None).sum_term(torch.tensor(3.0)) + 5.0 * 2) / 2) == 8.0

    rows = torch.arange(6.0)  # global rows; process k holds rows k, k + 2, ...
    assert fake.ctx(1, None).own_rows(rows).tolist() == [1.0, 3.0, 5.0]


@pytest.mark.parametrize("split", [True, False])
def test_logits_at_are_the_full_forwards_logits_at_those_rows(tiny_lm, split, monkeypatch):
    """``logits_at`` on both paths (the head at the rows only; the full forward) against the
    model's own logits picked at the same rows; ``token_nll`` is the cross-entropy of them."""
    import torch.nn.functional as F

    from hftguard.data.inputs import Encoded, collate

    items = [
        Encoded(input_ids=[5, 6, 7, 8, 9], labels=[-100, -100, 7, 8, 9], is_harmful=False),
        Encoded(input_ids=[5, 6, 7], labels=[-100, 6, 7], is_harmful=False),
    ]
    batch = collate(items, pad_id=0)
    if not split:
        monkeypatch.setattr(steps, "decoder_and_head", lambda m: None)
    else:
        assert steps.decoder_and_head(tiny_lm) is not None
    rows = batch.attention_mask[:, 1:].bool()
    with torch.no_grad():
        full = tiny_lm(**batch.model_inputs()).logits[:, :-1].float()
        got = steps.logits_at(tiny_lm, batch, rows)
        nll, mask = steps.token_nll(tiny_lm, batch)
    assert got.shape == (int(rows.sum()), full.shape[-1])
    torch.testing.assert_close(got, full[rows], rtol=1e-5, atol=1e-5)
    want = F.cross_entropy(full[mask], batch.labels[:, 1:][mask], reduction="none")
    torch.testing.assert_close(nll[mask], want, rtol=1e-5, atol=1e-5)
    assert bool((nll[~mask] == 0).all())
