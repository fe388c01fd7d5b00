"""The engine: the only part of hftguard that imports torch at module level.

``steps`` is the public defense kit (losses, gradient dicts, perturb/restore, hooks). The rest
is the host's machinery: the training loop (``training``), checkpoints and seeded streams
(``checkpoints``), model loading and LoRA (``models``), batched generation (``generation``),
multi-process runs (``distributed``), the papers' analysis probes (``probes``) and the
likelihood margin (``margin``). Importing this package imports none of them.
"""
