"""Model cache entries (converted GGUF, tiny-random) built by several processes at once.

The processes of one ``torchrun`` launch all resolve the same model alias at start-up; if the
entry is not cached yet, each builds it and publishes it. A process must never delete an entry
that another one has already published (the other may be loading it): that was the cause of
"Unrecognized model in .../tiny-random-v1" on one process of a cold two-process launch.
"""

from __future__ import annotations

import threading
from pathlib import Path

from hftguard.engine import models


def _build(root: Path, i: int) -> Path:
    tmp = root / f".tmp-{i}"
    tmp.mkdir()
    (tmp / "weights.bin").write_text(str(i))
    (tmp / "config.json").write_text('{"model_type": "llama"}')
    return tmp


def test_a_published_entry_is_never_deleted_by_a_concurrent_publisher(tmp_path: Path) -> None:
    """Many publishers race for the same entries; a watcher checks that once an entry has its
    config.json, it keeps it (nobody replaces or deletes a complete entry)."""
    rounds, writers = 12, 6
    lost: list[str] = []
    for r in range(rounds):
        target = tmp_path / f"entry-{r}"
        tmps = [_build(tmp_path, r * writers + i) for i in range(writers)]
        start = threading.Barrier(writers + 1)
        done = threading.Event()

        def publish(tmp: Path, target: Path = target, start: threading.Barrier = start) -> None:
            start.wait()
            models._publish(tmp, target)

        def watch(
            target: Path = target, start: threading.Barrier = start, done: threading.Event = done
        ) -> None:
            seen = False
            start.wait()
            while not done.is_set():
                present = (target / "config.json").is_file()
                if seen and not present:
                    lost.append(target.name)
                    return
                seen = seen or present

        threads = [threading.Thread(target=publish, args=(t,)) for t in tmps]
        watcher = threading.Thread(target=watch)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        watcher.join()
        assert (target / "config.json").is_file()
        # the losers' temporary directories are gone; only the published entry stays
        assert not any(t.exists() for t in tmps)
    assert lost == []


def test_an_incomplete_entry_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "weights.bin").write_text("half-written")  # a crash before config.json
    models._publish(_build(tmp_path, 0), target)
    assert (target / "config.json").is_file()
    assert (target / "weights.bin").read_text() == "0"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["entry"]
