"""Configuration: dataclasses, TOML files and ``--set key=value`` overrides, validated without
torch.

Each pipeline stage has one config dataclass. The CLI builds it from (in increasing precedence) the
defaults, a ``--config FILE.toml``, the command-line options, and ``--set key=value`` overrides.
Unknown keys, wrong types and out-of-range values are :class:`~hftguard.errors.ConfigError` with the
key's dotted path and a did-you-mean suggestion. Component options (``defense_options``...) are
plain
tables here and are checked against the component's own ``Config`` dataclass by :func:`build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from hftguard.errors import ConfigError, did_you_mean
from hftguard.options import (  # re-exported: the public names of the option helpers
    as_dict as as_dict,
)
from hftguard.options import (
    build as build,
)
from hftguard.options import (
    check_range as check_range,
)
from hftguard.options import (
    field_docs as field_docs,
)
from hftguard.options import (
    load_toml as load_toml,
)
from hftguard.options import (
    merge as merge,
)
from hftguard.options import (
    opt as opt,
)
from hftguard.options import (
    parse_sets as parse_sets,
)
from hftguard.options import (
    parse_value as parse_value,
)

T = TypeVar("T")

#: Prompt formats (hftguard.data.inputs.format_prompt); the Alpaca variants differ in the newline
#: after "### Response:" (Booster/Antibody code: with it; Vaccine/Lisa code: without).
Template = Literal["chat", "alpaca", "alpaca-no-newline"]
TEMPLATE_HELP = (
    "Prompt format: the model's chat template, 'alpaca' (ends '### Response:\\n', Booster/"
    "Antibody) or 'alpaca-no-newline' (Vaccine/Lisa)."
)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class LoraOptions:
    """LoRA adapter settings (the Booster/Antibody defaults; docs/configuration.md)."""

    r: int = opt(32, "LoRA rank.")
    alpha: float = opt(4.0, "LoRA alpha (scaling = alpha / r).")
    dropout: float = opt(0.0, "LoRA dropout.")
    target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj"], "Module names to adapt.")


@dataclass
class TrainOptions:
    """Optimisation settings owned by the one training loop."""

    lr: float = opt(5e-4, "AdamW learning rate.")
    epochs: float = opt(1.0, "Passes over the main data (ignored when max_steps > 0).")
    max_steps: int = opt(0, "Optimizer steps; 0 = derived from epochs.")
    batch_size: int = opt(8, "Examples per optimizer step (global batch, split over processes).")
    group_by_length: bool = opt(
        False,
        "Batch examples of similar token length together within each epoch (fewer pad tokens, "
        "faster steps); the epoch's set of examples is unchanged. Off by default because it "
        "changes which samples share a batch, which matters to defenses that compare the samples "
        "of a batch (e.g. Antibody's fine-tuning softmax).",
    )
    weight_decay: float = opt(0.1, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Clip the assembled gradient to this global norm; 0 = off.")
    scheduler: Literal["constant", "linear", "cosine"] = opt("constant", "LR schedule.")
    warmup_ratio: float = opt(0.0, "Warm-up share of steps (linear/cosine only, as HF does).")
    max_length: int = opt(256, "Max tokens per example (prompt + response).")
    checkpoint_every: int = opt(50, "Save a resumable checkpoint every N steps; 0 = never.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto",
        "auto = bf16 autocast on CUDA devices and CPUs with native bf16 (AVX-512 BF16 or AMX, "
        "detected), fp32 otherwise.",
    )
    device: str = opt("auto", "auto, cpu, cuda, cuda:1, mps ...")


REPORT_TO_HELP = (
    "Experiment trackers to stream this stage to: jsonl, tensorboard, wandb, mlflow or a "
    "plugin's (docs/configuration.md); [] = none. Not part of the run's identity."
)
#: Config keys that do not change what a stage computes: ignored when a recorded run is compared.
NOT_IDENTITY = ("report_to",)


@dataclass
class AlignConfig:
    """``hftguard align``: safety-align a base model with an alignment-stage defense."""

    model: str = opt("smollm2-135m-instruct", "Base model: alias, local dir, .gguf file or hub id.")
    preset: str = opt("", "Paper preset this config started from (set by --preset; recorded).")
    defense: str = opt("sft", "Alignment defense name (see `hftguard plugins`).")
    defense_options: dict[str, Any] = opt({}, "Options of the defense's Config.")
    data: str = opt(
        "safety-refusals", "Alignment data: dataset name, a local file or hf:ID[:CONFIG][:SPLIT]."
    )
    harmful: str = opt("harmful-compliance", "Harmful data for defenses that need it.")
    dataset_options: dict[str, Any] = opt(
        {}, "Per-dataset options: {dataset name: {option: value}} (e.g. a local source)."
    )
    data_fields: dict[str, Any] = opt(
        {},
        "Field mapping per dataset argument (files and hf:ID datasets): {ARG: "
        "'prompt=COLUMN,response=COLUMN'} or {ARG: {prompt = COLUMN, messages = COLUMN, "
        "system_prompt = TEXT}}, e.g. data_fields.harmful.prompt=goal.",
    )
    samples: int = opt(0, "Alignment examples to use; 0 = all.")
    retain: str = opt(
        "benign-instructions",
        "Benign requests mixed into the alignment data so the model stays helpful; answers are "
        "the base model's own (self-distilled) unless the file has responses. '' = off (papers).",
    )
    retain_ratio: float = opt(0.25, "Retain examples per alignment example.")
    retain_max_new_tokens: int = opt(64, "Length of the self-distilled retain answers.")
    template: Template = opt("chat", TEMPLATE_HELP)
    seed: int = opt(42, "Seed for data order, sampling and initialisation.")
    report_to: list[str] = opt([], REPORT_TO_HELP)
    train: TrainOptions = field(default_factory=TrainOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass
class FinetuneConfig:
    """``hftguard attack-finetune``: fine-tune on a poisoned user dataset."""

    model: str = opt("smollm2-135m-instruct", "Aligned run directory or a model.")
    preset: str = opt("", "Paper preset this config started from (set by --preset; recorded).")
    defense: str = opt("sft", "Fine-tuning defense name (see `hftguard plugins`).")
    defense_options: dict[str, Any] = opt({}, "Options of the defense's Config.")
    task: str = opt(
        "sentiment", "Benign task: dataset name, a local file or hf:ID[:CONFIG][:SPLIT]."
    )
    harmful: str = opt("harmful-compliance", "Harmful data mixed into the user data.")
    alignment_data: str = opt("safety-refusals", "Alignment data for defenses that need it.")
    dataset_options: dict[str, Any] = opt(
        {}, "Per-dataset options: {dataset name: {option: value}} (e.g. a local source)."
    )
    data_fields: dict[str, Any] = opt(
        {},
        "Field mapping per dataset argument (files and hf:ID datasets): {ARG: "
        "'prompt=COLUMN,response=COLUMN'} or {ARG: {prompt = COLUMN, messages = COLUMN, "
        "system_prompt = TEXT}}, e.g. data_fields.harmful.prompt=goal.",
    )
    harmful_ratio: float = opt(0.1, "Share p of harmful examples in the user data.")
    samples: int = opt(200, "User dataset size n.")
    screen: str = opt(
        "",
        "Screen the user data with this judge before training and drop what it flags as harmful "
        "(a provider's moderation filter; the manifest counts what leaked through). '' = off.",
    )
    screen_options: dict[str, Any] = opt({}, "Options of the screening judge's Config.")
    lora_mode: Literal["auto", "continue", "merge"] = opt(
        "auto", "continue the aligned adapter (single LoRA) or merge it and add a new one."
    )
    template: Template = opt("chat", TEMPLATE_HELP)
    seed: int = opt(42, "Seed for data mixing, order and initialisation.")
    report_to: list[str] = opt([], REPORT_TO_HELP)
    analysis_every: int = opt(
        0,
        "Analysis probes (docs/configuration.md): at the start, every N steps and at the end, the "
        "alignment loss, held-out harmful loss and harmful embedding drift "
        "(analysis.jsonl), and per-sample gradient norms of harmful vs benign user samples "
        "at the start and end (grad_norms.jsonl). 0 = off.",
    )
    analysis_samples: int = opt(32, "Probe size: samples per probe set and per grad-norm group.")
    train: TrainOptions = field(default_factory=lambda: TrainOptions(lr=1e-5, epochs=1.0))
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass
class EvalConfig:
    """``hftguard eval``: Harmful Score, Finetune Accuracy, over-refusal and degenerate rate."""

    model: str = opt("smollm2-135m-instruct", "Run directory or model to evaluate.")
    preset: str = opt("", "Paper preset this config started from (set by --preset; recorded).")
    judges: list[str] = opt(["refusal-keywords"], "Judges for HS (the first is the headline).")
    judge_options: dict[str, Any] = opt({}, "Per-judge options: {judge name: {option: value}}.")
    sinks: list[str] = opt(["markdown"], "Report sinks that also export metrics.json.")
    tasks: list[str] = opt(
        ["sentiment"],
        "Benign tasks for Finetune Accuracy: task names, local files or hf:ID[:CONFIG][:SPLIT] "
        "([] = none).",
    )
    task_scoring: str = opt(
        "contains",
        "Scoring rule of file tasks: exact, contains, number or label (docs/datasets.md).",
    )
    task_labels: list[str] = opt(
        [], "Label set of the 'label' rule; [] = the file's distinct gold answers."
    )
    harmful_prompts: str = opt(
        "harmful-eval", "Held-out harmful prompts (dataset, file or hf:ID[:CONFIG][:SPLIT])."
    )
    benign_prompts: str = opt("benign-eval", "Benign prompts for over-refusal ('' = skip).")
    dataset_options: dict[str, Any] = opt(
        {}, "Per-dataset options: {dataset name: {option: value}} (e.g. a local source)."
    )
    data_fields: dict[str, Any] = opt(
        {},
        "Field mapping per dataset argument (files and hf:ID datasets): harmful_prompts, "
        "benign_prompts, or a file/hf: task by its own argument; {ARG: 'prompt=COLUMN'} or "
        "{ARG: {prompt = COLUMN, system_prompt = TEXT}}, e.g. "
        "data_fields.harmful_prompts.prompt=behavior.",
    )
    harmful_samples: int = opt(100, "Harmful prompts to evaluate; 0 = all.")
    task_samples: int = opt(100, "Test examples per task; 0 = all.")
    benign_samples: int = opt(50, "Benign prompts for over-refusal; 0 = all.")
    max_new_tokens: int = opt(64, "Generation budget for harmful/benign prompts.")
    batch_size: int = opt(16, "Generation batch size.")
    template: Template = opt("chat", TEMPLATE_HELP)
    seed: int = opt(42, "Seed (greedy decoding is deterministic; recorded for provenance).")
    report_to: list[str] = opt([], REPORT_TO_HELP)
    device: str = opt("auto", "auto, cpu, cuda ...")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto",
        "Generation dtype: auto = bf16 on CUDA devices and CPUs with native bf16 (detected), "
        "fp32 otherwise.",
    )


@dataclass
class RepairConfig:
    """``hftguard repair``: repair a fine-tuned model after the user's fine-tuning."""

    model: str = opt("", "The attack-finetune run directory whose model is repaired.")
    defense: str = opt("safelora", "Repair defense name (see `hftguard plugins`).")
    defense_options: dict[str, Any] = opt({}, "Options of the defense's Config.")
    harmful: str = opt(
        "harmful-compliance",
        "Harmful data for repair defenses that need it (Antidote's calibration set; the train "
        "split, which the attack's data never uses): dataset name, a local file or hf:ID.",
    )
    samples: int = opt(0, "Harmful examples to load for defenses that need them; 0 = all.")
    dataset_options: dict[str, Any] = opt(
        {}, "Per-dataset options: {dataset name: {option: value}} (e.g. a local source)."
    )
    data_fields: dict[str, Any] = opt(
        {},
        "Field mapping per dataset argument (files and hf:ID datasets): {harmful: "
        "'prompt=COLUMN,response=COLUMN'}.",
    )
    template: str = opt(
        "",
        "Prompt template of the calibration data: chat, alpaca or alpaca-no-newline; '' = the "
        "attacked run's own (what its fine-tuning trained on).",
    )
    device: str = opt("auto", "Device for repair defenses that run the model: auto, cpu, cuda, ...")
    seed: int = opt(42, "Seed, for a repair defense that samples.")


@dataclass
class PipelineConfig:
    """``hftguard run``: align -> attack-finetune -> eval, evaluating each model."""

    align: AlignConfig = field(default_factory=AlignConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    repair: RepairConfig = field(default_factory=lambda: RepairConfig(defense=""))
    evaluate_base: bool = opt(True, "Also evaluate the base model.")
    skip_align: bool = opt(False, "Fine-tune the base model directly (NA-SFT).")
    dataset_options: dict[str, Any] = opt(
        {},
        "Dataset options for every stage, {dataset name: {option: value}}; a stage's own "
        "dataset_options entry for the same dataset takes precedence.",
    )

    preset: str = opt("", "Paper preset this config started from (set by --preset; recorded).")

    def __post_init__(self) -> None:
        stages: list[AlignConfig | FinetuneConfig | EvalConfig] = [
            self.align,
            self.finetune,
            self.eval,
        ]
        for stage in stages:
            stage.preset = stage.preset or self.preset
            for name, options in self.dataset_options.items():
                if not isinstance(options, dict):
                    continue  # reported by the component's Config build with its path
                stage.dataset_options[name] = {**options, **stage.dataset_options.get(name, {})}
        for name, options in self.dataset_options.items():
            if isinstance(options, dict):
                self.repair.dataset_options[name] = {
                    **options,
                    **self.repair.dataset_options.get(name, {}),
                }


#: The section of a pipeline config that holds each stage's config.
STAGE_SECTIONS: dict[type, str] = {
    AlignConfig: "align",
    FinetuneConfig: "finetune",
    EvalConfig: "eval",
    RepairConfig: "repair",
}


# ---------------------------------------------------------------------------------------------
# Building dataclasses from untyped mappings


#: Keys that only a pipeline config (``hftguard run``) has: a file with any of them is in pipeline
#: form, one without them holds a single stage's options at top level.
PIPELINE_ONLY_KEYS = (
    "align",
    "finetune",
    "eval",
    "repair",
    "grid",
    "evaluate_base",
    "skip_align",
)


def layered(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    section: str | None = None,
    cli: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """The one precedence of every entry point, as pipeline-form data.

    defaults < preset < config file < command-line options < ``--set``. ``section`` names the
    stage a stage command resolves (``align``, ``finetune``, ``eval``): its options and ``--set``
    keys are relative to that stage, and a config file without pipeline sections is read as that
    stage's table. ``hftguard run`` passes no section. Options whose value is ``None`` were not
    given.
    """
    data: dict[str, Any] = {}
    if preset:
        from hftguard import presets

        data = presets.load(preset).pipeline()
    if config_file:
        raw = load_toml(config_file)
        if section and not any(k in raw for k in PIPELINE_ONLY_KEYS):
            raw = {section: raw}
        data = merge(data, raw)
    given = {k: v for k, v in (cli or {}).items() if v is not None}
    if given:
        data = merge(data, {section: given} if section else given)
    overrides = parse_sets(sets)
    if overrides:
        data = merge(data, {section: overrides} if section else overrides)
    return data


def resolve(
    cls: type[T],
    *,
    config_file: str | Path | None = None,
    section: str | None = None,
    cli: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    preset: str | None = None,
) -> T:
    """Resolve a stage config (or the pipeline's) the way every entry point does.

    A stage is resolved as the matching section of the pipeline config that ``hftguard run`` would
    build from the same preset, file and overrides, so ``hftguard align --config F`` and
    ``hftguard run F`` train the same model (pipeline-wide ``dataset_options`` and the preset
    reference included). Another dataclass is built from the layered data directly.
    """
    if cls is PipelineConfig:
        data = layered(preset=preset, config_file=config_file, cli=cli, sets=sets)
        data.pop("grid", None)
        return build(cls, data)
    section = section or STAGE_SECTIONS.get(cls)
    if section is None:
        data = layered(preset=preset, config_file=config_file, cli=cli, sets=sets)
        return build(cls, data)
    data = layered(preset=preset, config_file=config_file, section=section, cli=cli, sets=sets)
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(
            f"'{section}' must be a table of options, got {table!r}.",
            hint=f"Write the stage's options under [{section}].",
        )
    stage = build(cls, table)  # errors name keys relative to the stage, as its options are given
    # the pipeline-wide keys (dataset_options, preset) reach the stage exactly as under `run`
    shared = {k: v for k, v in data.items() if k not in PIPELINE_ONLY_KEYS}
    return getattr(build(PipelineConfig, {**shared, section: stage}), section)  # type: ignore[no-any-return]


def same_config(recorded: Any, cfg: Any) -> bool:
    """Whether a config recorded in a manifest describes the same run as ``cfg``.

    Options added to hftguard after the run was recorded count as unchanged when ``cfg`` keeps
    their defaults, so finished runs stay finished (and resumable) across upgrades. A recorded key
    the current config class no longer knows makes the configs differ.
    """
    current = _identity(as_dict(cfg))
    if not isinstance(recorded, dict):
        return False
    if _identity(recorded) == current:
        return True
    try:
        upgraded = _identity(as_dict(build(type(cfg), recorded)))
    except (ConfigError, TypeError, ValueError):
        return False
    return upgraded == current


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the :data:`NOT_IDENTITY` keys (trackers do not change results)."""
    return {k: v for k, v in config.items() if k not in NOT_IDENTITY}


#: The largest float32 (torch.finfo(torch.float32).max, written out to keep this module torch-free).
FLOAT32_MAX = 3.4028234663852886e38


#: torch's device types (``torch.device`` accepts these, with an optional ``:INDEX``), plus
#: ``npu``, the name Ascend's torch_npu gives torch's private-use backend. Listed here so that
#: a typo is refused with the config, before a run directory exists and without importing torch.
DEVICE_TYPES = (
    *("cpu", "cuda", "mps", "xpu", "hip", "npu", "hpu", "mtia", "maia", "xla", "ipu", "ve"),
    *("fpga", "lazy", "vulkan", "meta", "privateuseone"),
)


def check_device(where: str, value: str) -> None:
    """Refuse a device string that ``torch.device`` would not accept (``auto`` is ours)."""
    kind, sep, index = value.partition(":")
    if value == "auto" or (kind in DEVICE_TYPES and (not sep or index.isdigit())):
        return
    guess = "cuda" if kind.lower() in ("gpu", "nvidia") else kind.lower()
    example = f"{where} cpu" if where.startswith("--") else f"--set {where}=cpu"
    raise ConfigError(
        f"{where} = {value!r} is not a device."
        + (did_you_mean(guess, DEVICE_TYPES) if kind not in DEVICE_TYPES else ""),
        hint=f"Use auto (CUDA when available, else CPU), cpu, cuda, cuda:N (the N-th GPU), mps or "
        f"another torch device type ({', '.join(DEVICE_TYPES[3:])}), e.g. {example}.",
    )


def _validate_train(t: TrainOptions, where: str) -> None:
    check_device(f"{where}.device", t.device)
    check_range(f"{where}.lr", t.lr, 0.0, FLOAT32_MAX)  # beyond it the optimizer cannot step
    check_range(f"{where}.epochs", t.epochs, 0.0)
    check_range(f"{where}.max_steps", t.max_steps, 0)
    check_range(f"{where}.batch_size", t.batch_size, 1)
    check_range(f"{where}.max_length", t.max_length, 8)
    check_range(f"{where}.warmup_ratio", t.warmup_ratio, 0.0, 1.0)
    check_range(f"{where}.max_grad_norm", t.max_grad_norm, 0.0)
    if t.epochs == 0 and t.max_steps == 0:
        raise ConfigError(
            f"{where}: both epochs and max_steps are 0; nothing would be trained.",
            hint=f"Set {where}.max_steps or {where}.epochs.",
        )


def validate_stage(cfg: Any, pipeline: bool = False) -> None:
    """Range checks that do not need the registry (component names are checked by the registry).

    ``pipeline``: ``cfg`` is a stage of a pipeline config, whose input model the pipeline sets."""
    if isinstance(cfg, (AlignConfig, FinetuneConfig)):
        _validate_train(cfg.train, "train")
        check_range("lora.r", cfg.lora.r, 1)
        check_range("samples", cfg.samples, 0)
    if isinstance(cfg, AlignConfig):
        check_range("retain_ratio", cfg.retain_ratio, 0.0)
    if isinstance(cfg, FinetuneConfig):
        check_range("harmful_ratio", cfg.harmful_ratio, 0.0, 1.0)
        check_range("samples", cfg.samples, 1)
        check_range("analysis_every", cfg.analysis_every, 0)
        check_range("analysis_samples", cfg.analysis_samples, 1)
    if isinstance(cfg, EvalConfig):
        check_device("device", cfg.device)
        for key in ("harmful_samples", "task_samples", "benign_samples"):
            check_range(key, getattr(cfg, key), 0)
        check_range("max_new_tokens", cfg.max_new_tokens, 1)
        check_range("batch_size", cfg.batch_size, 1)
        from hftguard.data.filetask import check_scoring

        check_scoring(cfg.task_scoring)
        if not cfg.harmful_prompts:
            raise ConfigError(
                "harmful_prompts is empty.",
                hint="Give a dataset name or a file: --harmful-prompts harmful-eval or my.csv.",
            )
        if not cfg.judges:
            raise ConfigError("No judge given.", hint="Pass --judge refusal-keywords (or another).")
    if isinstance(cfg, RepairConfig):
        if not cfg.model and not pipeline:
            raise ConfigError(
                "No model to repair.",
                hint="Pass --model RUN_DIR: the run directory of `hftguard attack-finetune`.",
            )
        check_device("device", cfg.device)
        check_range("samples", cfg.samples, 0)
        templates = get_args(Template)
        if cfg.template and cfg.template not in templates:
            raise ConfigError(
                f"template = {cfg.template!r} is not a prompt template.",
                hint=f"Use one of {', '.join(templates)}, or '' for the attacked run's own.",
            )
    if isinstance(cfg, PipelineConfig):
        validate_stage(cfg.align)
        validate_stage(cfg.finetune)
        validate_stage(cfg.eval)
        validate_stage(cfg.repair, pipeline=True)
