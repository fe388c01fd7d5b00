"""Side by side, one process, one thread: an SFT forward+backward with the LM head applied at the
answer positions only (gradients.token_nll) against the full forward (all positions).

Usage: python tools/bench_head_at_answers.py   (the embedded SmolLM2-135M-Instruct; ~3 min)
"""

import random
import statistics
import time

import torch

from hftguard.engine import steps as gradients

from hftguard.engine import models
from hftguard.config import LoraOptions
from hftguard.context import DataContext
from hftguard.data.inputs import collate, encode_all, load_examples
from hftguard.registry import default_registry

torch.set_num_threads(1)
reg = default_registry()
ctx = DataContext(seed=0)
sent = load_examples("sentiment", "task", "train", reg, ctx)[:64]
harm = load_examples("harmful-compliance", "harmful", "attack", reg, ctx)[:16]
align = load_examples("safety-refusals", "alignment", "train", reg, ctx)[:64]
rec = models.resolve("smollm2-135m-instruct").recipe
tok = models.load_tokenizer(rec.base)
base = models.load_base(rec.base)
model = models.attach_lora(
    base, LoraOptions(r=32, alpha=32.0, target_modules=["q_proj", "k_proj", "v_proj"]), seed=0
)
model.train()
rng = random.Random(0)


def batches(exs, k=4):
    out = []
    for _ in range(k):
        items = encode_all(rng.sample(exs, 8), tok, "chat", 160)
        out.append(collate(items, tok.pad_token_id))
    return out


mix = batches(sent * 4 + harm, 4)
alb = batches(align, 4)
orig = gradients.decoder_and_head


def step(b):
    model.zero_grad(set_to_none=True)
    loss = gradients.lm_loss(model, b)
    loss.backward()


for name, bs in (("attack mixture p=0.2", mix), ("alignment refusals", alb)):
    t = {"head at answers": [], "full forward": []}
    for _ in range(3):
        for mode in t:
            gradients.decoder_and_head = orig if mode == "head at answers" else (lambda m: None)
            for b in bs:
                c0 = time.process_time()
                step(b)
                t[mode].append(time.process_time() - c0)
    gradients.decoder_and_head = orig
    a, f = statistics.median(t["head at answers"]), statistics.median(t["full forward"])
    toks = sum(int(b.attention_mask.sum()) for b in bs)
    ans = sum(int((b.labels != -100).sum()) for b in bs)
    print(
        f"{name}: full {f:.3f} s, head at answers {a:.3f} s, speed-up {f / a:.3f}x (answer tokens {ans}/{toks})"
    )
