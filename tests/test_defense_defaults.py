"""Every built-in defense's option defaults, pinned twice: to a literal value here (with the paper,
script or repository it comes from) and to the "Options" table of its docs/components page, so that
neither the code nor the docs can change a default silently, and the two cannot drift apart.

A changed default changes what every run without an explicit option computes (Booster's λ, Lisa's
K1/K2/ρ, ...). If a default changes on purpose, change it here, in the docs table, and say why in
CHANGELOG.md.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENT_DOCS = ROOT / "docs" / "components"
ALIGN, FINETUNE, REPAIR = "alignment-defense", "finetune-defense", "repair-defense"

#: (kind, name) -> (docs page, {option: default}). Each page's Options table names the sources.
EXPECTED: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    # SFT has no options of its own (the training options live in [train]).
    (ALIGN, "sft"): ("sft.md", {}),
    (FINETUNE, "sft"): ("sft.md", {}),
    (ALIGN, "vaccine"): (
        "vaccine.md",
        {
            # Vaccine repo: train.py default and the README's `Vaccine.sh 2`; the
            # Booster/Antibody papers' Vaccine baselines use 5.
            "rho": 2.0,
        },
    ),
    (REPAIR, "safelora"): (
        "safelora.md",
        {
            # IBM/SafeLoRA SafeLoRAConfig: select_layers_type, num_proj_layers, threshold
            "select": "number",
            "num_layers": 10,
            "threshold": 0.5,
            "projector": "official",  # C = V V^T / ||V||_F (ours adds "orthogonal")
        },
    ),
    (REPAIR, "antidote"): (
        "antidote.md",
        {
            # git-disl/Antidote script/finetune/antidote_poison_ratio.sh: dense_ratio=0.1
            "mask_ratio": 0.1,
            "score": "wanda",  # utils.prune_wanda_outlier with calibration data
            "batch_size": 8,  # ours (the official code runs one example at a time)
            "max_length": 256,  # ours
        },
    ),
    (ALIGN, "repnoise"): (
        "repnoise.md",
        {
            "alpha": 1.0,  # official representation-noising repo; the Booster baseline uses 0.1
            "beta": 0.001,  # both sources
        },
    ),
    (ALIGN, "t-vaccine"): (
        "t-vaccine.md",
        {
            "rho": 3.0,  # T-Vaccine README/script `T-Vaccine.sh 3`
            "layers": 8,  # S, `lisa_activated_layers=8` in script/alignment/T-Vaccine.sh
            "resample_every": 20,  # J, `lisa_interval_steps=20`
            "probability_every": 200,  # K, `probability_steps=200`
            "scope": "attention",  # the official code freezes only attention-module params
            "seed": 0,  # hftguard: seed of the (seed, step)-seeded layer draws
        },
    ),
    (ALIGN, "booster"): (
        "booster.md",
        {
            "lam": 5.0,  # git-disl/Booster smooth_align.sh; the GSM8K runs use 25 (issue #3)
            "alpha": 0.1,  # same script: step size of the normalised harmful step
        },
    ),
    (ALIGN, "antibody"): (
        "antibody.md",
        {
            "alpha": 0.1,  # code `alpha` = the paper's ρ, antibody_alignment_finetune.sh
            "eta": 5.0,  # code `eta_lbd`, same script
            "lambda_mode": "cosine",  # the released code's max(0, η − cos)
            "ema": 0.99,  # `ema_momentum` in the script (argparse default 0.9)
            "lambda_refusal": 0.05,  # code `lambda2`, same script
            "lambda_max": 50.0,  # hftguard's cap for kkt mode (‖d‖² can be tiny)
        },
    ),
    (FINETUNE, "antibody"): (
        "antibody-finetune.md",
        {
            "tau": 1.0,  # WeightedSFTTrainer temperature
            "score_reduction": "mean",  # the official code's per-token mean NLL
            "score_pass": "auto",  # ours: the task score from the training forward (same numbers)
            "log_samples": True,  # hftguard: log the per-sample weights (Fig. 2 data)
        },
    ),
    (FINETUNE, "lisa"): (
        "lisa.md",
        {
            "k_align": 100,  # K1, Lisa paper/repo and both baselines
            "k_finetune": 900,  # K2, same
            "rho": 1.0,  # Lisa paper/repo; the Booster/Antibody baselines use 0.01
            "proximal_warmup": 0.1,  # code-only: no proximal term in the first 10%
            # hftguard: a run shorter than one K1 + K2 cycle is refused unless asked to shrink it
            "scale_schedule": False,
        },
    ),
    (FINETUNE, "kl"): (
        "kl.md",
        {
            "lam": 0.1,  # Vaccine repo script/KL_finetune/*.sh `lamb=${3:-0.1}`
            "direction": "teacher-student",  # KLTrainer's KLDivLoss(log q_student, p_teacher)
            "tokens": "all",  # the repo applies it at every position (hftguard drops padding)
        },
    ),
    (FINETUNE, "mixing"): (
        "mixing.md",
        {
            "m": 100,  # Vaccine repo train.py --guide_data_num default (vlguard)
        },
    ),
    (FINETUNE, "mixing-joint"): (
        "mixing-joint.md",
        {
            "lam": 0.1,  # Booster repo script/finetune/united/vlguard_lamb.sh `lamb=${1:-0.1}`
            "guide_batch_size": 4,  # Booster VlguardTrainer's alignment DataLoader batch_size=4
        },
    ),
    (FINETUNE, "ewc"): (
        "ewc.md",
        {
            "lam": 0.001,  # Vaccine/Booster train.py --lamb default
            "fisher_batches": 400,  # Vaccine repo: 2000 alignment examples / eval batch 5
        },
    ),
}


def code_defaults(cls: type) -> dict[str, Any]:
    """{field: default} of a component's Config dataclass."""
    out = {}
    for f in dataclasses.fields(cls.Config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        else:
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def parse_cell(text: str) -> Any:
    """A docs table cell as a value: `true`/`false`, an int, a float, else the bare string."""
    value = text.strip().strip("`").strip()
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"[-+]?\d+", value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def docs_defaults(page: str) -> dict[str, Any]:
    """The option -> default table under the page's "## Options" heading.

    A page without options says so in a line "**Options:** none"; it then gives ``{}``.
    """
    text = (COMPONENT_DOCS / page).read_text(encoding="utf-8")
    section = re.search(r"^## Options\b.*?$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if section is None:
        assert re.search(r"\*\*Options:\*\* none\b", text), f"{page}: no options table"
        return {}
    rows = [ln.strip() for ln in section.group(1).splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[:2] == ["option", "default"], f"{page}: table header is {header}"
    assert set(rows[1].replace("|", "").strip()) <= set("-: "), f"{page}: no separator row"
    table = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = cells[0].strip("`")
        assert name not in table, f"{page}: {name} listed twice"
        table[name] = parse_cell(cells[1])
    assert table, f"{page}: empty options table"
    return table


def same(a: Any, b: Any) -> bool:
    """Equal with the same type (an int option must not become a float, True is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(("kind", "name"), sorted(EXPECTED), ids=lambda v: str(v))
def test_defaults_match_the_paper_and_the_docs_table(registry, kind, name):
    page, expected = EXPECTED[(kind, name)]
    cls = registry.get(kind, name).cls
    code = code_defaults(cls)
    docs = docs_defaults(page)
    assert set(code) == set(expected), (
        f"{name}: options {sorted(code)} vs pinned {sorted(expected)}"
    )
    assert set(docs) == set(code), f"{page}: documents {sorted(docs)}, code has {sorted(code)}"
    for option, want in expected.items():
        assert same(code[option], want), (
            f"{kind} {name}.{option}: code {code[option]!r} != {want!r}"
        )
        assert same(docs[option], want), f"{page} {option}: docs {docs[option]!r} != {want!r}"
        # typed like the literal (an int option stays an int)
        field_type = next(f.type for f in dataclasses.fields(cls.Config) if f.name == option)
        type_name = getattr(field_type, "__name__", field_type)  # a string under PEP 563
        assert type_name == type(want).__name__, (option, field_type)


def test_every_builtin_defense_is_pinned(registry):
    builtin = {
        (kind, info.name)
        for kind in (ALIGN, FINETUNE, REPAIR)
        for info in registry.components(kind)
        if info.distribution == "hftguard"
    }
    assert builtin == set(EXPECTED), "pin the defaults of a new built-in defense in EXPECTED"


def test_the_table_parser_reads_what_it_should():
    assert [parse_cell(c) for c in ("`true`", "100", "1.0", "`cosine`", "0.05")] == [
        True,
        100,
        1.0,
        "cosine",
        0.05,
    ]
    assert docs_defaults("booster.md") == {"lam": 5.0, "alpha": 0.1}
