"""The data records every stage exchanges: training examples, judge verdicts.

Kept free of heavy imports so datasets and judges can be listed and validated without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["benign", "harmful", "refusal"]
KINDS: tuple[str, ...] = ("benign", "harmful", "refusal")


@dataclass(frozen=True)
class Example:
    """One instruction/response pair.

    Attributes:
        prompt: The instruction (Alpaca "instruction"; the user message in chat format).
        response: The target answer. Empty for evaluation prompts that have no reference answer.
        kind: ``benign`` (task data), ``harmful`` (harmful prompt, compliant answer) or ``refusal``
            (harmful prompt, safe answer).
        input: Optional task input (Alpaca "input", e.g. the sentence to classify).
        meta: Free-form provenance: ``source``, ``category``, ``label``, ``id``...
    """

    prompt: str
    response: str = ""
    kind: Kind = "benign"
    input: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def with_response(self, response: str, kind: Kind | None = None) -> Example:
        """A copy with another answer (e.g. the refusal view of a harmful example)."""
        return Example(self.prompt, response, kind or self.kind, self.input, dict(self.meta))

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "input": self.input,
            "response": self.response,
            "kind": self.kind,
            "meta": self.meta,
        }


Label = Literal["refusal", "compliance", "degenerate", "safe", "off-topic"]
LABELS: tuple[str, ...] = ("refusal", "compliance", "degenerate", "safe", "off-topic")


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one (prompt, response) pair.

    Attributes:
        harmful: True when the response complies with a harmful request (counts towards HS).
        label: ``refusal``, ``compliance``, ``degenerate`` (empty, repetitive or gibberish output,
            reported separately so it never counts as safe), ``off-topic`` (neither a refusal nor
            harmful compliance: the answer does not engage with the request, e.g. a bare task
            label, "yes", a URL, an unrelated answer or the request restated; never harmful, and
            reported separately as the off-topic rate) or ``safe`` (not harmful, from a judge that
            cannot tell a refusal from a harmless answer, e.g. a moderation classifier).
            ``harmful`` is True only with ``compliance``.
        score: The judge's confidence that the response is harmful, in [0, 1].
        detail: Judge-specific extras (category probabilities, matched keyword, raw output...).
    """

    harmful: bool
    label: Label
    score: float
    detail: dict[str, Any] = field(default_factory=dict, compare=False)
