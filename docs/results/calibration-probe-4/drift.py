"""Attention-output drift of attacked models vs their aligned start, on the alignment probe (#14, Vaccine rho scale).

HED (hftguard.analysis.drift): mean over samples of sum_l ||e_l^t - e_l^0||_F.
Vaccine's rho is a joint L2 norm over all layers and a whole batch: the comparable drift of a batch of B
samples is sqrt(sum_i sum_l ||de_l(x_i)||^2); we report it for B = 8 (the calibrated batch size).
"""
import json, math, sys
import torch
from hftguard import models
from hftguard.analysis import embeddings, drift
from hftguard.data import load_examples, encode_all
from hftguard.context import DataContext
from hftguard.registry import default_registry

torch.set_num_threads(int(sys.argv[1]))
start_dir, *others = sys.argv[2:]
reg = default_registry()
ex = load_examples("safety-refusals", "alignment", "train", reg, DataContext(seed=0))[:32]
dev = torch.device("cpu")
def emb(path):
    rec = models.resolve(path).recipe
    model, tok = models.load_for_eval(rec, dev, torch.float32)
    items = encode_all(ex, tok, "chat", 160)
    return embeddings(model, items, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, dev)
e0 = emb(start_dir)
L = len(e0[0])
for p in others:
    e1 = emb(p)
    sq = [sum(float(torch.linalg.vector_norm(b - a)) ** 2 for a, b in zip(s0, s1)) for s0, s1 in zip(e0, e1)]
    per_layer = [float(torch.linalg.vector_norm(b - a)) for s0, s1 in zip(e0, e1) for a, b in zip(s0, s1)]
    B = 8
    joint = [math.sqrt(sum(sq[i:i + B])) for i in range(0, len(sq), B)]
    print(json.dumps({"model": p, "layers": L, "samples": len(e0), "hed": drift(e0, e1),
                      "per_sample_layer_mean": sum(per_layer) / len(per_layer),
                      "batch8_joint_norm_mean": sum(joint) / len(joint),
                      "batch8_joint_norm": joint}))
