"""Regenerate docs/cli.md from the commands' --help (COLUMNS=100, no plugins, no colour).

.venv/bin/python tools/gen_cli_md.py        # rewrites docs/cli.md
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

COMMANDS = [
    "",
    "align",
    "attack-finetune",
    "eval",
    "run",
    "judge",
    "rejudge",
    "report",
    "export",
    "repair",
    "screen",
    "validate-judges",
    "bench",
    "plugins",
    "presets",
    "validate",
    "configs",
    "docs",
]
HEADER = (
    "# CLI reference\n\nGenerated from `--help` (`COLUMNS=100`) by `tools/gen_cli_md.py`. Exit "
    "codes: 0 success, 1 run failed, 2 usage or config error, 3 plugin error, 130 interrupted, "
    "143 stopped by SIGTERM.\n\n"
)


def section(cmd: str) -> str:
    env = dict(os.environ, COLUMNS="100", HFTGUARD_LOAD_PLUGINS="", NO_COLOR="1", TERM="dumb")
    exe = Path(sys.executable).with_name("hftguard")
    out = subprocess.run(
        [str(exe), *([cmd] if cmd else []), "--help"], capture_output=True, text=True, env=env
    ).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    out = "\n".join(line.rstrip() for line in out.split("\n"))
    return f"## `hftguard {cmd}`\n\n```text\n{out[:-1]}```\n\n"


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    text = HEADER + "".join(section(c) for c in COMMANDS)
    (root / "docs" / "cli.md").write_text(text.rstrip("\n") + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
