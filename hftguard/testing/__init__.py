"""Helpers for hftguard's tests and for plugin authors' tests: tiny models built locally, offline.

``tiny_tokenizer()``, ``tiny_model()`` and ``tiny_classifier()`` (from ``hftguard.engine.tiny``,
where the ``tiny-random`` model alias is built too) give a byte-level BPE with a ChatML template
and two-layer Llamas; a full align -> attack-finetune -> eval run on them takes seconds on a CPU.
``hftguard.testing.contracts`` checks a component against the plugin contract.
"""

from __future__ import annotations

from typing import Any

from hftguard.engine.tiny import CHAT_TEMPLATE, tiny_classifier, tiny_model, tiny_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "save_tiny_judge_model",
    "tiny_classifier",
    "tiny_judge_config",
    "tiny_model",
    "tiny_tokenizer",
]


def save_tiny_judge_model(
    directory: Any, task: str = "causal-lm", labels: tuple[str, ...] = (), seed: int = 0
) -> Any:
    """Save a tiny model and tokenizer for a model judge under ``directory``; return its Path.

    ``task`` is ``"causal-lm"`` (a tiny chat LM) or ``"sequence-classification"`` (a tiny Llama
    classifier with ``labels``, default ``LABEL_0``/``LABEL_1``).
    """
    from pathlib import Path

    path = Path(directory)
    tok = tiny_tokenizer()
    if task == "sequence-classification":
        model = tiny_classifier(tok, tuple(labels) or ("LABEL_0", "LABEL_1"), seed=seed)
    else:
        model = tiny_model(tok, seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def tiny_judge_config(cls: Any, directory: Any) -> Any:
    """``cls.Config`` with ``model`` pointing at a tiny stand-in saved under ``directory``.

    For judges whose Config has a ``model`` option (the model-based judges); returns None for the
    others, which run on their defaults. Uses the judge's ``model_task`` and ``model_labels``.
    """
    import dataclasses
    from pathlib import Path

    if "model" not in {f.name for f in dataclasses.fields(cls.Config)}:
        return None
    path = save_tiny_judge_model(
        Path(directory) / f"tiny-{cls.name}",
        getattr(cls, "model_task", "causal-lm"),
        tuple(getattr(cls, "model_labels", ())),
    )
    return dataclasses.replace(cls.Config(), model=str(path))
