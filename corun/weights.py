"""Where the project's default weights live, and the message when there are none."""
from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import CheckpointError

#: Shipped in the repository (trained by the project itself; weights/README.md is its model card).
REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "corun_default.safetensors"
AUTHORS_WEIGHTS_URL = "https://drive.google.com/file/d/18afbgAOLYYr8Ef4JsUtz8WNl9xzQ3cd9/view?usp=sharing"


class NoWeightsError(CheckpointError):
    """No trained weights were given and no default weights exist."""


def default_weights_path() -> Path | None:
    """``$CORUN_WEIGHTS`` if set, else the repository's ``weights/corun_default.safetensors`` if present."""
    env = os.environ.get("CORUN_WEIGHTS")
    if env:
        return Path(env)
    return REPO_WEIGHTS if REPO_WEIGHTS.is_file() else None


def no_weights_message() -> str:
    return (
        "no trained weights are available: this checkout has no "
        f"{REPO_WEIGHTS.relative_to(REPO_WEIGHTS.parent.parent)} and $CORUN_WEIGHTS is not set.\n"
        "  Either pass --weights PATH with the authors' released CORUN.pth "
        f"(download: {AUTHORS_WEIGHTS_URL}),\n"
        "  or a checkpoint you trained with `corun train`, or set CORUN_WEIGHTS=PATH."
    )


def default_model(device: str = "cpu"):
    """Load the default weights into a CORUN of the right size, or raise :class:`NoWeightsError`."""
    from .checkpoint import load_model

    path = default_weights_path()
    if path is None:
        raise NoWeightsError(no_weights_message())
    return load_model(path, map_location=device)
