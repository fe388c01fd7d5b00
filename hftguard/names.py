"""Component names, and the file names built from them.

A component's ``name`` (defense, dataset, task, judge, report sink) ends up in file names, such as
the ``external/<task>.json`` that ``hftguard eval`` writes for a task scored externally. So the
registry refuses, when it is built, a name that is not :data:`NAME_RULE` (no path separator, no
``..``, no leading dot, no whitespace or control character), and every path built from a name goes
through :func:`name_path`, which proves the result stays inside its directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from hftguard.errors import RunDirError

#: The longest name accepted (file systems allow 255 bytes; suffixes need some).
MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
NAME_RULE = (
    "names must be kebab-case: lowercase ASCII letters, digits, '-', '_' and '.', starting with a "
    f"letter or digit, without '..', not ending in '.', at most {MAX_NAME_LENGTH} characters "
    "(names become file names)"
)


def check_name(name: str) -> None:
    """Raise ``ValueError("invalid name ...")`` unless ``name`` follows :data:`NAME_RULE`."""
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or ".." in name
        or name.endswith(".")
        or len(name) > MAX_NAME_LENGTH
    ):
        raise ValueError(f"invalid name {name!r}: {NAME_RULE}")


def name_path(directory: Path, name: str, suffix: str = "", *, root: Path | None = None) -> Path:
    """``directory / f"{name}{suffix}"``, after proving it resolves inside ``directory`` and
    inside ``root``.

    ``root`` (default ``directory``) is the run directory the file must stay in; symbolic links
    are followed, so a ``directory`` that links out of ``root`` is refused too. Raises
    :class:`~hftguard.errors.RunDirError` for a name that would escape.
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    target = directory / f"{name}{suffix}"
    real = target.resolve()
    if any(real == d or not real.is_relative_to(d) for d in (directory.resolve(), root.resolve())):
        raise RunDirError(
            f"Refusing to write {target}: the name {name!r} would put it outside {root}.",
            hint=f"Component names become file names; {NAME_RULE}. Rename the component.",
        )
    return target
