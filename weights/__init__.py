"""Model folders: the shipped paris-mini (the default model), the paris-2 template, and the
paris-mini build recipe."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
# The one definition of the default model: the `paris` command hands it to the pipeline's
# commands (pipeline/ does not import weights/), and the server settings default to it.
DEFAULT_MODEL = WEIGHTS_DIR / "paris-mini"
