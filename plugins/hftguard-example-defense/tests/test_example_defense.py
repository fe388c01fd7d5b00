"""Tests of the example defense plugin: the contract, the gradient against a hand-written LDIFS loss
on an independent copy of the starting model, exact restoration of the weights, discovery through
the entry point, and an end-to-end ``hftguard attack-finetune --defense ldifs`` run.

Only the public API is used: ``hftguard``, the defense kit ``hftguard.engine.steps`` and
``hftguard.testing``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hftguard_example_defense import LDIFS, LDIFSConfig, layer_indices

import hftguard
from hftguard import FinetuneDefense, StepContext
from hftguard.engine.steps import IGNORE_INDEX, Batch, lm_loss
from hftguard.testing import tiny_model, tiny_tokenizer

#: (prompt, response) pairs of different lengths, so the batch has padding.
PAIRS = [
    ("What is the capital of France?", "Paris."),
    ("Give me a recipe for pancakes, please.", "Mix flour, eggs and milk, then fry them."),
    ("Tips for studying?", "Sleep well and plan."),
]


# ------------------------------------------------------------------------------------------------
# Fixtures-by-function


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


def make_batch(tok: Any, pairs: list[tuple[str, str]] = PAIRS) -> Batch:
    """A right-padded chat batch whose labels are the response tokens only."""
    rows = []
    for prompt, response in pairs:
        head = tok(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n").input_ids
        tail = tok(f"{response}<|im_end|>").input_ids
        rows.append((head + tail, [IGNORE_INDEX] * len(head) + tail))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_ids)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    assert (mask == 0).any(), "the test batch must contain padding"
    return Batch(ids, mask, labels, torch.zeros(len(rows), dtype=torch.bool))


def lora_model(tok: Any, layers: int = 2, seed: int = 0) -> Any:
    """Tiny Llama + LoRA r=4 on q/k/v/o, B random and non-zero so that A and B get gradients."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model(tok, seed=seed, layers=layers),
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def context(model: Any, **changes: Any) -> StepContext:
    def no_stream(name: str) -> Any:
        raise AssertionError(f"ldifs drew from the stream {name!r}")

    ctx = StepContext(
        step=0, total_steps=10, params=trainable(model), next_batch=no_stream, loss_fn=lm_loss
    )
    return dataclasses.replace(ctx, **changes) if changes else ctx


def grads(model: Any) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for _, p in trainable(model)]


def zero_grads(model: Any) -> None:
    for _, p in trainable(model):
        p.grad = None


def perturb(model: Any, scale: float = 0.02, seed: int = 7) -> None:
    """Move the LoRA weights away from θ₀, so the feature distance and its gradient are not 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in trainable(model):
            p.add_(scale * torch.randn(p.shape, generator=g))


def set_up_defense(tok: Any, layers: int = 2, **options: Any) -> tuple[LDIFS, Any, Any, Batch]:
    """A defense set up at the model's start (θ₀), a frozen deep copy of that model (the
    independent reference), the model moved away from θ₀, and a padded batch.

    Not named ``setup``: pytest < 8.1 runs a module-level ``setup()`` as a nose-style module
    setup, with the module as its argument."""
    model = lora_model(tok, layers=layers)
    defense = LDIFS(LDIFSConfig(**options))
    defense.setup(context(model))
    reference = copy.deepcopy(model).eval()
    perturb(model)
    return defense, model, reference, make_batch(tok)


# ------------------------------------------------------------------------------------------------
# The independent computation


def hand_distance(
    model: Any, reference: Any, b: Batch, every: int, *, pad: bool = False, width: bool = True
) -> torch.Tensor:
    """The LDIFS distance written out on its own: HF hidden states of ``model`` and of the frozen
    ``reference`` copy, the embedding output dropped, every ``every``-th layer from the last,
    mean over the non-padding positions of ‖Δ‖² / d, mean over the layers. ``pad=True`` (wrongly)
    counts padding positions too; ``width=False`` (wrongly) leaves out the division by d."""
    inputs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
    with torch.no_grad():
        h0 = reference(**inputs, output_hidden_states=True).hidden_states
    h = model(**inputs, output_hidden_states=True).hidden_states
    n_layers = len(h) - 1
    layers = [n_layers - j * every for j in range((n_layers - 1) // every + 1)]
    keep = torch.ones_like(b.attention_mask) if pad else b.attention_mask
    keep = keep.to(torch.float64)
    per_layer = []
    for layer in layers:
        sq = ((h[layer].double() - h0[layer].double()) ** 2).sum(dim=-1)  # [B, T]
        d = h[layer].shape[-1] if width else 1
        per_layer.append((sq * keep).sum() / (keep.sum() * d))
    return torch.stack(per_layer).mean()


def hand_grads(
    model: Any, reference: Any, b: Batch, lam: float, every: int, **wrong: bool
) -> tuple[list[torch.Tensor], float, float]:
    """Autograd of the HF causal-LM loss + λ·(hand distance); (gradients, CE, distance)."""
    zero_grads(model)
    ce = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
    distance = hand_distance(model, reference, b, every, **wrong)
    (ce + lam * distance).backward()
    g = grads(model)
    zero_grads(model)
    return g, float(ce.detach()), float(distance.detach())


def rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors jointly."""
    num = sum(float(((x.double() - y.double()) ** 2).sum()) for x, y in zip(a, b, strict=True))
    return (num / sum(float((y.double() ** 2).sum()) for y in b)) ** 0.5


# ------------------------------------------------------------------------------------------------
# 1. The contract


def test_passes_the_hftguard_contract_checks(tmp_path: Path) -> None:
    from hftguard.testing.contracts import check_component, check_defense_trains

    assert issubclass(LDIFS, FinetuneDefense)
    assert (LDIFS.name, LDIFS.stage, LDIFS.passes) == ("ldifs", "finetune", 1.5)
    assert LDIFS.paper and "2308.13320" in LDIFS.paper
    check_component(LDIFS)
    check_defense_trains(LDIFS, tmp_path)


def test_options_and_their_validation() -> None:
    fields = {f.name: f for f in dataclasses.fields(LDIFSConfig)}
    assert (fields["lam"].default, fields["every"].default) == (0.1, 1)
    assert all(f.metadata["help"] for f in fields.values())
    for bad in ({"lam": -0.1}, {"lam": float("nan")}, {"lam": float("inf")}, {"lam": "big"}):
        with pytest.raises(hftguard.ConfigError, match="lam"):
            LDIFSConfig(**bad)
    for bad in ({"every": 0}, {"every": -2}, {"every": 1.5}, {"every": True}):
        with pytest.raises(hftguard.ConfigError, match="every"):
            LDIFSConfig(**bad)
    assert LDIFSConfig(lam=0, every=3).lam == 0


def test_layer_selection_counts_back_from_the_last_layer() -> None:
    # hidden_states of a 4-layer model: the embedding output, then layers 1..4
    assert layer_indices(5, 1) == [4, 3, 2, 1]
    assert layer_indices(5, 2) == [4, 2]
    assert layer_indices(5, 3) == [4, 1]
    assert layer_indices(5, 9) == [4]  # never empty, never the embedding output


# ------------------------------------------------------------------------------------------------
# 2. The gradient against the independent computation


@pytest.mark.parametrize(("layers", "every"), [(2, 1), (3, 2)])
def test_gradient_is_that_of_ce_plus_lambda_feature_distance(
    tok: Any, layers: int, every: int
) -> None:
    lam = 0.3  # with the perturbation below, the two terms' gradients are of similar size
    defense, model, reference, b = set_up_defense(tok, layers=layers, lam=lam, every=every)
    zero_grads(model)
    metrics = defense.training_step(model, b, context(model, step=3))
    got = grads(model)
    expected, ce, distance = hand_grads(model, reference, b, lam, every)
    assert distance > 1e-3  # the regulariser is really exercised
    # fp32 step against a float64 hand-written loss: observed rel ≈ 4e-7 (torch 2.13, CPU)
    assert rel(got, expected) < 1e-5
    scale = max(float(e.abs().max()) for e in expected)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5 * scale)
    assert float(metrics["loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(metrics["ldifs"]) == pytest.approx(distance, rel=1e-4)
    assert float(metrics["ldifs_term"]) == pytest.approx(lam * distance, rel=1e-4)

    # The comparison is tight enough to see each likely bug: every wrong variant is far off.
    sft = hand_grads(model, reference, b, 0.0, every)[0]
    assert 0.5 < rel(expected, sft) < 20  # both terms matter in the gradient
    wrong = {
        "factor 2": hand_grads(model, reference, b, 2 * lam, every)[0],
        "sign flip": hand_grads(model, reference, b, -lam, every)[0],
        "no /hidden_size": hand_grads(model, reference, b, lam, every, width=False)[0],
        "padding included": hand_grads(model, reference, b, lam, every, pad=True)[0],
    }
    for bug, g in wrong.items():
        assert rel(got, g) > 1e-2, bug


def test_lambda_zero_gives_exactly_the_ce_gradient(tok: Any) -> None:
    defense, model, _, b = set_up_defense(tok, lam=0.0)
    zero_grads(model)
    metrics = defense.training_step(model, b, context(model))
    got = grads(model)
    zero_grads(model)
    lm_loss(model, b).backward()  # the loop's ctx.loss_fn
    # bit-identical here (torch 2.13, CPU); lm_loss applies the LM head to the response positions
    # only, so another backend may round differently in the last place
    for a, e in zip(got, grads(model), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-9)
    assert float(metrics["ldifs"]) > 1e-4  # the distance is still measured and logged
    assert float(metrics["ldifs_term"]) == 0.0


def test_at_theta0_the_distance_is_zero_and_the_step_is_sft(tok: Any) -> None:
    model = lora_model(tok)
    defense = LDIFS(LDIFSConfig(lam=50.0))
    defense.setup(context(model))
    b = make_batch(tok)
    metrics = defense.training_step(model, b, context(model))
    got = grads(model)
    zero_grads(model)
    lm_loss(model, b).backward()
    for a, e in zip(got, grads(model), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-8)
    assert float(metrics["ldifs"]) == pytest.approx(0.0, abs=1e-10)


def test_data_parallel_shards_average_to_the_global_step(tok: Any) -> None:
    """Two simulated processes (rows rank::2, the sampler's loss_tokens, the all-reduce of the
    position count inside ctx.token_mean) average to the one-process gradient."""
    defense, model, _, b = set_up_defense(tok, lam=0.3)
    zero_grads(model)
    defense.training_step(model, b, context(model))
    single = grads(model)
    ce_tokens = float((b.labels[:, 1:] != IGNORE_INDEX).sum())
    positions = float(b.attention_mask.sum())
    total: list[torch.Tensor] = []
    for rank in range(2):
        shard = Batch(
            b.input_ids[rank::2],
            b.attention_mask[rank::2],
            b.labels[rank::2],
            b.is_harmful[rank::2],
            meta={"loss_tokens": ce_tokens / 2},
        )
        ctx = context(
            model,
            world_size=2,
            rank=rank,
            all_reduce_mean=lambda ts: [torch.full_like(ts[0], positions / 2)],
        )
        zero_grads(model)
        defense.training_step(model, shard, ctx)
        g = grads(model)
        total = g if not total else [x + y for x, y in zip(total, g, strict=True)]
    assert rel([t / 2 for t in total], single) < 1e-5


# ------------------------------------------------------------------------------------------------
# 3. The reference forward leaves the weights exactly as they were


def test_weights_are_restored_bit_for_bit_and_theta0_is_kept(tok: Any) -> None:
    defense, model, reference, b = set_up_defense(tok)
    start = [p.detach().clone() for _, p in trainable(reference)]
    before = [p.detach().clone() for _, p in trainable(model)]
    assert any(not torch.equal(x, y) for x, y in zip(before, start, strict=True))
    model.train()
    for step in range(2):
        zero_grads(model)
        defense.training_step(model, b, context(model, step=step))
    assert model.training  # the eval-mode reference forward put the mode back
    for (_, p), x in zip(trainable(model), before, strict=True):
        assert torch.equal(p.detach(), x)
    for t, x in zip(defense.theta0, start, strict=True):
        assert torch.equal(t, x)


def test_state_dict_round_trip_keeps_the_starting_weights(tok: Any, tmp_path: Path) -> None:
    defense, model, _, b = set_up_defense(tok, lam=0.3)
    zero_grads(model)
    defense.training_step(model, b, context(model))
    original = grads(model)
    # as the loop's checkpoints store it: torch.save, then torch.load(weights_only=True)
    torch.save({"defense": defense.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True, map_location="cpu")["defense"]
    resumed = LDIFS(LDIFSConfig(lam=0.3))  # a new process, resuming after θ moved
    resumed.load_state_dict(state)
    resumed.setup(context(model))
    for t, x in zip(resumed.theta0, defense.theta0, strict=True):
        assert torch.equal(t, x)
    zero_grads(model)
    resumed.training_step(model, b, context(model))
    for a, e in zip(grads(model), original, strict=True):
        assert torch.equal(a, e)
    other = LDIFS()
    other.load_state_dict({"names": ["something.else"], "theta0": state["theta0"][:1]})
    with pytest.raises(hftguard.HftguardError, match="does not match"):
        other.setup(context(model))


# ------------------------------------------------------------------------------------------------
# 4. Discovery through the entry point, and 5. the CLI


def run_hftguard(*args: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGUARD_")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "hftguard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_plugin_is_installed() -> None:
    proc = run_hftguard("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    mine = [r for r in rows if r["name"] == "ldifs"]
    assert len(mine) == 1, rows
    assert mine[0]["kind"] == "finetune-defense"
    assert mine[0]["stage"] == "finetune"
    assert mine[0]["distribution"] == "hftguard-example-defense"
    assert mine[0]["plugin"] == "example_defense"
    assert "2308.13320" in mine[0]["paper"]
    assert "error" not in mine[0]


def test_attack_finetune_runs_with_ldifs(tmp_path: Path) -> None:
    out = tmp_path / "attacked"
    proc = run_hftguard(
        "attack-finetune",
        "--model",
        "tiny-random",
        "--defense",
        "ldifs",
        "--set",
        "defense_options.lam=0.5",
        "--max-steps",
        "2",
        "-n",
        "8",
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
        "--quiet",
        "--out",
        str(out),
        HFTGUARD_HOME=str(tmp_path / "home"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    defense = manifest["components"]["defense"]
    assert defense["name"] == "ldifs"
    assert defense["distribution"] == "hftguard-example-defense"
    assert defense["options"] == {"lam": 0.5, "every": 1}
    log = [json.loads(x) for x in (out / "finetune_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1]
    assert log[0]["ldifs"] == pytest.approx(0.0, abs=1e-10)  # at θ₀ the features coincide
    assert log[1]["ldifs"] > 0  # one update later they have moved
    assert log[1]["ldifs_term"] == pytest.approx(0.5 * log[1]["ldifs"])
