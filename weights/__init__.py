"""Model folders: the shipped paris-mini (the default model), the paris-2 template, and the
paris-mini build recipe."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = WEIGHTS_DIR / "paris-mini"
