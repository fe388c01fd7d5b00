"""``hftguard run``: a grid of align -> attack-finetune -> eval pipelines, each stage computed once.

Why: a researcher's result is a comparison — alignment defense × fine-tuning defense × harmful ratio
p × dataset size n × task × seed — and its expensive stages are shared: one aligned model serves
every p, n, task and fine-tuning defense. So the grid expands a config into cells, computes each
distinct stage once in its own run directory with the stage's own ``run`` function, skips what is
finished (same config, newer than its input model), resumes what was interrupted, and carries on
past a failed cell. Re-running the same command therefore does exactly what is left; an eval whose
config changed (a judge added) is redone, cheaply, because generations and verdicts are cached by
content (:mod:`hftguard.pipeline.cache`).

A config without a ``[grid]`` table is a single cell and keeps the single-pipeline layout
(``base-eval``, ``aligned``, ``aligned-eval``, ``attacked``, ``attacked-eval``). With one::

    OUT/manifest.json                                  the grid: cells, their status, result rows
    OUT/evals/base/                                    the base model's eval
    OUT/aligned/<align>-s<seed>/                       one aligned model per (defense, seed)
    OUT/evals/aligned-<align>-s<seed>/                 its eval
    OUT/cells/<align>__<ft>__p<p>__n<n>__<task>__s<seed>/{attacked,eval}

The ``[grid]`` table (every axis a value or a list; a missing axis takes the base config's value)::

    align_defense = ["sft", "booster"]      # or "none": fine-tune the base model (NA-SFT)
    finetune_defense = ["sft", "lisa"]
    methods = ["sft/sft", "sft/lisa"]       # instead of the two above: explicit align/ft pairs
                                            # ("sft/sft+screen:JUDGE": screen the user data first)
    harmful_ratio = [0.0, 0.1, 0.2]
    samples = [200]
    task = ["sentiment"]                    # cells measure FA on their own task
    seed = [42, 43]                         # align and fine-tuning seeds (eval prompts are fixed)
    [grid.align_options.booster]            # defense_options of that alignment defense
    [grid.finetune_options.lisa]
    [grid.labels]                           # display names for reports: "booster/sft" = "Booster"
    [grid.attack]                           # the attacker's fine-tuning settings, each a list:
    lr = [1e-5, 1e-4]                       # lr, epochs, max_steps, batch_size, lora_r,
                                            # lora_alpha, harmful (cells: ...__s42__lr1e-05)
"""

from hftguard.pipeline.grid.layout import Layout, plan, stage_state
from hftguard.pipeline.grid.runner import (
    GridFailed,
    GridIncomplete,
    check_root,
    run,
    summary_rows,
)
from hftguard.pipeline.grid.spec import (
    ATTACK_KEYS,
    AXES,
    GRID_KEYS,
    NO_ALIGN,
    Cell,
    Grid,
    check,
    fmt_num,
    load,
    load_file,
    single,
    slug,
)

__all__ = [
    "ATTACK_KEYS",
    "AXES",
    "GRID_KEYS",
    "NO_ALIGN",
    "Cell",
    "Grid",
    "GridFailed",
    "GridIncomplete",
    "Layout",
    "check",
    "check_root",
    "fmt_num",
    "load",
    "load_file",
    "plan",
    "run",
    "single",
    "slug",
    "stage_state",
    "summary_rows",
]
