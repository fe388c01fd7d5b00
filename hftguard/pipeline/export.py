"""``hftguard export``: take a stage's model out of hftguard, loadable without hftguard.

A run directory's model is a *recipe* (``hftguard.engine.models.ModelRecipe``): a base model
plus a stack of LoRA adapters. An attacked model is usually base -> aligned adapter (merged) ->
attack adapter, so its own ``adapter/adapter_config.json`` names the plain base model, and loading
that adapter with PEFT alone silently gives a different model. This module writes the model as eval
loads it:

- ``merge=True`` (the default): the base with every adapter merged
  (:func:`hftguard.engine.models.load_for_eval`), saved as safetensors with the tokenizer (it
  carries the chat template), a ``generation_config.json`` whose stop tokens are the ones eval
  stops at, and a model card ``README.md``. ``AutoModelForCausalLM.from_pretrained(DIR)`` gives the
  same model.
- ``merge=False``: ``DIR/adapter/`` (the run's last adapter) and, where the adapter's base is not a
  plain model the user already has, ``DIR/base/`` (the base with every earlier adapter merged); the
  adapter's ``base_model_name_or_path`` is patched to name the base it belongs on. A single
  adapter on a local model directory or a hub id keeps that base (absolute path or hub id). A base
  that exists only in hftguard's cache (an alias such as ``smollm2-135m-instruct``, or a converted
  ``.gguf``) is written to ``DIR/base/`` too: its cache path is not portable, and the hub's
  SmolLM2-135M-Instruct is not the dequantised GGUF hftguard uses.

Everything is checked before anything is written, and the export is built in a temporary directory
beside ``DIR`` and renamed into place at the end: a failure leaves nothing half-written.
Nothing here imports torch at module level (the CLI imports this lazily anyway).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from hftguard import runs
from hftguard.errors import ExitCode, HftguardError

#: --dtype choices and the torch dtype names they stand for.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: The machine-readable provenance file written beside the model card.
PROVENANCE = "hftguard_export.json"
TRAINING_STAGES = ("align", "finetune", "repair")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class ExportError(HftguardError):
    """The run cannot be exported as asked (not a training run, --out taken, hub unreachable)."""

    exit_code = ExitCode.USAGE


# ---------------------------------------------------------------------------------------------
# Checks (before anything is written)


def check_run(run_dir: Path) -> dict[str, Any]:
    """The manifest of the completed align or finetune run in ``run_dir``; ExportError otherwise."""
    if not run_dir.is_dir():
        raise ExportError(
            f"{run_dir} is not a directory.",
            hint="Pass the --out directory of a finished align, attack-finetune or repair stage.",
        )
    stage = runs.run_stage(run_dir)
    if stage is None:
        raise ExportError(
            f"{run_dir} is not an hftguard run directory (no hftguard {runs.MANIFEST}).",
            hint="Pass the --out directory of a finished align, attack-finetune or repair stage "
            "(in a grid: GRID/aligned/NAME or GRID/cells/CELL/attacked).",
        )
    manifest = runs.read_manifest(run_dir)
    if stage not in TRAINING_STAGES:
        if stage == "eval":
            model = (manifest.get("config") or {}).get("model")
            hint = (
                "An eval run holds no model of its own: export the run it evaluated"
                + (f" ({model})" if model else "")
                + "."
            )
        elif stage == "pipeline":
            hint = (
                "Export one of the grid's training stages: GRID/aligned/NAME or "
                "GRID/cells/CELL/attacked."
            )
        else:
            hint = "Pass the --out directory of a finished align, attack-finetune or repair stage."
        raise ExportError(f"{run_dir} holds a '{stage}' run, which has no model to export.", hint)
    if manifest.get("status") != "completed" or not isinstance(manifest.get("model"), dict):
        raise ExportError(
            f"The {stage} run in {run_dir} has not finished (status: {manifest.get('status')}).",
            hint=f"Finish it first (re-run its stage with --resume --out {run_dir}), then export.",
        )
    return manifest


def check_out(out: Path, run_dir: Path) -> None:
    """``out`` must not exist, or be an empty directory, and must not be inside the run."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ExportError(
                f"--out {out} exists and is not a directory.", hint="Choose another --out."
            )
        if any(out.iterdir()):
            raise ExportError(
                f"--out {out} already exists and is not empty.",
                hint="Choose a new --out (export never overwrites), or delete it yourself.",
            )
    target, run = out.resolve(), run_dir.resolve()
    if target == run or run in target.parents:
        raise ExportError(
            f"--out {out} is inside the run directory {run_dir}.",
            hint="Export to a directory outside the run.",
        )


def check_push(repo: str) -> None:
    """Fail fast, before exporting, when ``repo`` cannot be pushed to from this machine."""
    from hftguard import network

    if not _REPO_ID.match(repo) or ".." in repo or repo.endswith((".", "-")):
        raise ExportError(
            f"--push-to-hub '{repo}' is not a hub repository id.",
            hint="Use NAME or ORG/NAME, as on huggingface.co (letters, digits, - _ .).",
        )
    upload = f"`hf upload {repo} DIR`"
    if network.offline():
        raise ExportError(
            "Cannot push to the Hugging Face Hub: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set.",
            hint=f"Export without --push-to-hub, then upload DIR where the hub is reachable "
            f"({upload}), or unset the variable.",
        )
    if not network.hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise ExportError(
            f"Cannot push to the Hugging Face Hub: {endpoint} cannot be reached from this machine.",
            hint=f"Export without --push-to-hub, then upload DIR where the hub is reachable "
            f"({upload}).",
        )


# ---------------------------------------------------------------------------------------------
# Provenance: the stages behind a run, and an eval of it


def _previous_run(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    """The run whose model this run started from, where it is now (None: a plain model)."""
    inputs = (manifest.get("input_model") or {}).get("adapters") or []
    candidates: list[Path] = []
    rooted = runs.rooted_model(run_dir, manifest)
    if rooted is not None:
        candidates.append(rooted)
    if inputs:
        candidates.append(Path(inputs[-1]).parent)
    for key in ("aligned_run",):
        if isinstance(manifest.get(key), str):
            candidates.append(Path(manifest[key]))
    model = (manifest.get("config") or {}).get("model")
    if isinstance(model, str) and model and rooted is None:
        candidates.append(Path(model).expanduser())
    if not inputs and rooted is None:
        return None  # started from a plain model
    for c in candidates:
        if c.is_dir() and runs.run_stage(c) in TRAINING_STAGES and c.resolve() != run_dir.resolve():
            return c
    return None


def stage_chain(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The training stages behind the run in ``run_dir``, oldest first, as ``{"path", "manifest"}``
    dicts (``path`` None for an earlier stage whose run directory was not found)."""
    chain = [{"path": run_dir, "manifest": manifest}]
    seen = {run_dir.resolve()}
    cur, m = run_dir, manifest
    for _ in range(32):
        prev = _previous_run(cur, m)
        if prev is None:
            if (m.get("input_model") or {}).get("adapters"):
                chain.insert(0, {"path": None, "manifest": {}})  # an earlier stage, not found
            break
        if prev.resolve() in seen:
            break
        seen.add(prev.resolve())
        cur, m = prev, runs.read_manifest(prev)
        chain.insert(0, {"path": cur, "manifest": m})
    return chain


def find_eval(run_dir: Path, adapters: list[str]) -> tuple[Path, dict[str, Any]] | None:
    """An eval run of this model next to it (a grid's cell, or GRID/evals), with its metrics."""
    here = run_dir.resolve()
    places = [here.parent, *(a / "evals" for a in list(here.parents)[:3])]
    for place in places:
        if not place.is_dir():
            continue
        for d in sorted(place.iterdir()):
            if not d.is_dir() or runs.run_stage(d) != "eval":
                continue
            try:
                m = runs.read_manifest(d)
                metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
            except (HftguardError, OSError, ValueError):
                continue
            if m.get("status") != "completed" or not isinstance(metrics, dict):
                continue
            rooted = runs.rooted_model(d, m)
            recipe = (metrics.get("model") or {}).get("recipe") or {}
            if (rooted is not None and rooted.resolve() == here) or (
                recipe.get("adapters") == adapters
            ):
                return d, metrics
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True) if value else "none"
    return str(value)


def _stage_lines(n: int, stage: dict[str, Any]) -> list[str]:
    path, m = stage["path"], stage["manifest"]
    if path is None:
        return [f"{n}. An earlier stage whose run directory was not found (merged into the base)."]
    cfg = m.get("config") or {}
    defense = (m.get("components") or {}).get("defense") or {}
    name = {
        "align": "Alignment",
        "finetune": "Fine-tuning (attack)",
        "repair": "Repair (after fine-tuning)",
    }.get(m.get("stage"), "Stage")
    lines = [f"{n}. **{name}** (`{m.get('stage')}`, run `{path}`)"]
    dist = defense.get("distribution")
    lines.append(
        f"   - defense: `{defense.get('name', cfg.get('defense'))}`"
        + (f" ({dist} {defense.get('distribution_version', '')})".rstrip() if dist else "")
        + f", options: {_fmt(defense.get('options', cfg.get('defense_options', {})))}"
    )
    if defense.get("effective"):
        lines.append(f"   - as run: {_fmt(defense['effective'])}")
    if m.get("stage") == "finetune":
        comp = m.get("composition") or {}
        p = comp.get("harmful_ratio", cfg.get("harmful_ratio"))
        lines.append(
            f"   - user data: task `{cfg.get('task')}`, harmful `{cfg.get('harmful')}`, "
            f"p (harmful_ratio) = {p}, n = {comp.get('n', cfg.get('samples'))} "
            f"({comp.get('n_harmful', '?')} harmful, {comp.get('n_benign', '?')} benign)"
        )
    for key, src in (m.get("data") or {}).items():
        if isinstance(src, dict):
            what = ", ".join(
                f"{k} {_fmt(v)}" for k, v in src.items() if k not in ("sha256",) and v != ""
            )
            sha = f", sha256 {str(src['sha256'])[:12]}" if src.get("sha256") else ""
            lines.append(f"   - data `{key}`: {what}{sha}")
    if m.get("stage") == "repair":  # no training: what the repair did instead
        lines.append(f"   - repair: {_fmt(m.get('repair') or {})}; seed {cfg.get('seed')}")
        return lines
    lora = cfg.get("lora") or {}
    train = cfg.get("train") or {}
    trained = m.get("training") or {}
    lines.append(
        f"   - seed {m.get('seed', cfg.get('seed'))}; LoRA r = {lora.get('r')}, alpha = "
        f"{lora.get('alpha')} (mode {m.get('lora_mode', '?')}); lr {train.get('lr')}, "
        f"{trained.get('steps', '?')} steps, precision {(m.get('precision') or {}).get('dtype')}"
    )
    return lines


def _eval_lines(found: tuple[Path, dict[str, Any]] | None) -> list[str]:
    if found is None:
        return ["No eval run of this model was found next to its run directory."]
    d, metrics = found
    rows = [("HS % (harmful score)", metrics.get("harmful_score"))]
    rows.append(("HS+ % (HS + degenerate)", metrics.get("harmful_score_plus")))
    rows.append(("over-refusal %", metrics.get("over_refusal_rate")))
    rows += [(f"FA {k} %", v) for k, v in sorted((metrics.get("finetune_accuracy") or {}).items())]
    rows.append(("likelihood margin", (metrics.get("likelihood_margin") or {}).get("mean")))
    judges = metrics.get("judges")
    names = ", ".join(judges) if isinstance(judges, dict | list) else judges
    out = [f"From the eval run `{d}`" + (f" (judges: {names})" if names else "") + ":", ""]
    out += ["| metric | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return out


def model_card(
    run_dir: Path,
    recipe: Any,
    chain: list[dict[str, Any]],
    evaluation: tuple[Path, dict[str, Any]] | None,
    *,
    merge: bool,
    dtype: str,
    base_ref: str | None,
) -> str:
    """The README.md: what the model is, each stage that made it, how it was exported."""
    from hftguard.engine.models import ALIASES

    spec = recipe.base_spec
    about = ALIASES.get(spec)
    hub_base = spec if spec.count("/") == 1 and not Path(spec).exists() else None
    front = ["---", f"library_name: {'transformers' if merge else 'peft'}"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += ["tags:", "- hftguard", "- harmful-fine-tuning", "- lora", "---", ""]
    last = chain[-1]["manifest"]
    title = {
        "align": "aligned",
        "repair": "aligned, fine-tuned (attacked), then repaired",
    }.get(last.get("stage"), "aligned, then fine-tuned (attacked)")
    lines = [*front, f"# {run_dir.name}: {title} model exported by hftguard", ""]
    lines += [
        "Made with hftguard (harmful fine-tuning defenses: align -> "
        "attack-finetune -> eval). A fine-tuning stage may have trained on **harmful** data on "
        "purpose (the poison ratio p below): this model is for safety research, not deployment.",
        "",
        "## Base model",
        "",
        f"`{spec}`" + (f": {about}" if about else "") + f" (loaded from `{recipe.base}`).",
        "",
        "## Stages",
        "",
        "Each training stage trained a LoRA adapter (a repair stage replaced the last one with its "
        "repaired version); each earlier adapter was merged into the weights before the next "
        "stage (the model eval measured is the base with every adapter merged).",
        "",
    ]
    for i, stage in enumerate(chain, 1):
        lines += _stage_lines(i, stage)
    lines += ["", "## Evaluation", "", *_eval_lines(evaluation), "", "## Export", ""]
    if merge:
        lines += [
            f"Every adapter merged into the base weights, saved as safetensors in {dtype}: "
            "load it with plain transformers.",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "# DIR: this directory (or its hub repository id)",
            'model = AutoModelForCausalLM.from_pretrained("DIR")',
            'tokenizer = AutoTokenizer.from_pretrained("DIR")',
            "```",
        ]
    else:
        where = "`base/` (in this directory)" if base_ref is None else f"`{base_ref}`"
        lines += [
            f"The last stage's LoRA adapter (`adapter/`), to be applied on {where}"
            + (
                ": the base model with every earlier adapter merged, saved in " + dtype
                if base_ref is None
                else ""
            )
            + ". Its `adapter_config.json` names that base; if this directory moves, pass the "
            "base explicitly:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'base = AutoModelForCausalLM.from_pretrained("{base_ref or "DIR/base"}")',
            'model = PeftModel.from_pretrained(base, "DIR/adapter")',
            'tokenizer = AutoTokenizer.from_pretrained("DIR/adapter")',
            "```",
        ]
    lines += [
        "",
        f"Exported from `{run_dir}` by hftguard {runs.library_versions().get('hftguard', '?')} on "
        f"{runs.now()}; the stages' manifests are summarised in `{PROVENANCE}`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing


def _generation_config(model: Any, tok: Any) -> None:
    """Stop where eval stops (the tokenizer's EOS and the model's), pad with the tokenizer's pad."""
    from hftguard.engine.generation import _stop_ids

    stops = _stop_ids(tok, model)
    gen = model.generation_config
    if stops:
        gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    if getattr(tok, "bos_token_id", None) is not None and gen.bos_token_id is None:
        gen.bos_token_id = tok.bos_token_id


def _save_model(model: Any, tok: Any, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _generation_config(model, tok)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    if not (path / "generation_config.json").is_file():
        model.generation_config.save_pretrained(path)


def _from_cache(base: str) -> bool:
    """Whether ``base`` is a model hftguard converted into its cache (an alias or a .gguf)."""
    from hftguard.engine.models import hftguard_home

    p = Path(base).expanduser()
    if not p.is_dir():
        return False
    return (hftguard_home() / "models").resolve() in p.resolve().parents


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    merge: bool = True,
    dtype: str = "fp32",
    push_to_hub: str | None = None,
    reporter: Any = None,
) -> dict[str, Any]:
    """Export the model of the run in ``run_dir`` to ``out``; returns a summary (also written to
    ``out/hftguard_export.json``). See the module docstring for what is written."""
    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    if dtype not in DTYPES:
        raise ExportError(f"Unknown --dtype '{dtype}'.", hint="Use one of: " + ", ".join(DTYPES))
    manifest = check_run(run_dir)
    check_out(out, run_dir)
    if push_to_hub:
        check_push(push_to_hub)
    info = reporter.info if reporter is not None else (lambda _m: None)

    import torch

    from hftguard.engine import models

    recipe = models.ModelRecipe.from_dict(runs.model_recipe(run_dir, manifest))
    for adapter in recipe.adapters:
        models._check_adapter(adapter)  # a missing or damaged adapter: before anything is written
    chain = stage_chain(run_dir, manifest)
    evaluation = find_eval(run_dir, recipe.adapters)
    torch_dtype = getattr(torch, DTYPES[dtype])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = runs.make_temp_dir(out.parent, f".{out.name}.export-")
    except OSError as exc:
        raise runs.unwritable(out, exc) from exc
    target = out.resolve()
    base_ref: str | None = None
    ref: str | None = None
    try:
        if merge:
            info(f"export: merging {len(recipe.adapters)} adapter(s) into {recipe.base_spec}")
            model, tok = models.load_for_eval(recipe, torch.device("cpu"), torch_dtype)
            _save_model(model, tok, tmp)
        else:
            if not recipe.adapters:
                raise ExportError(
                    f"The run in {run_dir} has no adapter to export.",
                    hint="Export it with --merge.",
                )
            underneath, last = recipe.adapters[:-1], recipe.adapters[-1]
            tok = models.load_tokenizer(recipe.base)
            if underneath or _from_cache(recipe.base):
                info(f"export: writing the base ({len(underneath)} adapter(s) merged)")
                base = models._merge_adapters(models.load_base(recipe.base), underneath)
                base.to(dtype=torch_dtype).eval()
                _save_model(base, tok, tmp / "base")
                ref = str(target / "base")
            else:
                base_ref = ref = recipe.base  # a local model directory or a hub id, as it is
            shutil.copytree(last, tmp / "adapter", ignore=shutil.ignore_patterns(".*"))
            cfg_path = tmp / "adapter" / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            adapter_cfg["base_model_name_or_path"] = ref
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2) + "\n", encoding="utf-8")
            tok.save_pretrained(tmp / "adapter")
        summary = {
            "run": str(run_dir.resolve()),
            "out": str(target),
            "merged": merge,
            "dtype": dtype,
            "base": recipe.base,
            "base_spec": recipe.base_spec,
            "adapters": list(recipe.adapters),
            "adapter_base": None if merge else ref,
            "stages": [
                {
                    "path": str(s["path"]) if s["path"] is not None else None,
                    "stage": s["manifest"].get("stage"),
                    "defense": ((s["manifest"].get("components") or {}).get("defense") or {}),
                    "config": s["manifest"].get("config"),
                    "seed": s["manifest"].get("seed"),
                    "composition": s["manifest"].get("composition"),
                    "data": s["manifest"].get("data"),
                }
                for s in chain
            ],
            "eval": str(evaluation[0]) if evaluation else None,
            "exported_at": runs.now(),
            "libraries": runs.library_versions(),
        }
        (tmp / "README.md").write_text(
            model_card(
                run_dir,
                recipe,
                chain,
                evaluation,
                merge=merge,
                dtype=dtype,
                base_ref=base_ref,
            ),
            encoding="utf-8",
        )
        runs.atomic_write_json(tmp / PROVENANCE, summary)
        runs.default_modes(tmp)  # safetensors shards are written 0o600
        try:
            os.replace(tmp, out)  # over an empty --out too
        except OSError as exc:
            raise ExportError(
                f"Cannot move the export into {out}: {exc}.",
                hint="--out must not exist or be empty; choose another --out.",
            ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["files"] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    if push_to_hub:
        summary["pushed_to"] = push(out, push_to_hub, info)
    return summary


def push(out: Path, repo: str, info: Any) -> str:
    """Upload ``out`` to the hub repository ``repo`` (created if needed); returns its URL."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        info(f"export: pushing {out} to {repo}")
        url = api.create_repo(repo, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(out), repo_id=repo, repo_type="model", commit_message="hftguard export"
        )
    except Exception as exc:
        raise HftguardError(
            f"The export is in {out}, but pushing it to {repo} failed: {type(exc).__name__}: {exc}",
            hint=f"Log in (`hf auth login`) and check the repository, then upload it: "
            f"`hf upload {repo} {out}`.",
        ) from exc
    return str(url)
