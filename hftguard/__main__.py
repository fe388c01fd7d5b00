"""``python -m hftguard``."""

from hftguard.cli import run

run()
