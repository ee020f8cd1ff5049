"""Model files: a directory with ``model.pt`` (a plain state dict) and ``config.json``.

Loading uses ``torch.load(weights_only=True)``: nothing in a model directory can execute code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "model.pt", "config.json"


def write_dir_atomic(path: str | os.PathLike, files: dict[str, object], *, overwrite: bool = False) -> Path:
    """Write a directory of files atomically (:func:`biossl._io.atomic_dir`).

    ``files`` maps a file name to a state dict (saved with torch), a dict (JSON) or bytes.
    """
    from .._io import atomic_dir

    with atomic_dir(path, overwrite=overwrite) as tmp:
        for name, obj in files.items():
            target = tmp / name
            if isinstance(obj, bytes):
                target.write_bytes(obj)
            elif name.endswith(".json"):
                target.write_text(json.dumps(obj, indent=2, sort_keys=True))
            else:
                torch.save(obj, target)
    return Path(path)


def read_config(path: str | os.PathLike, required: tuple[str, ...] = (WEIGHTS, CONFIG)) -> dict:
    """Read and check ``config.json`` of a model directory."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist (or is not a directory).")
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        raise ValueError(f"model directory {path} is missing {', '.join(missing)}; save the model again.")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / CONFIG} is not valid JSON ({err}); the model directory is damaged.") from None
    if not isinstance(config, dict) or "format_version" not in config:
        raise ValueError(f"{path / CONFIG} has no format_version; it was not written by biossl.")
    if config["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format version {config['format_version']!r}, this biossl reads version "
            f"{FORMAT_VERSION}; retrain the model or use the biossl version that wrote it."
        )
    return config


def read_weights(path: str | os.PathLike, device: torch.device) -> dict[str, torch.Tensor]:
    """Load a state dict safely (tensors only; pickled objects are refused)."""
    path = Path(path) / WEIGHTS
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError on bad files
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            why = "it holds pickled Python objects, which biossl never unpickles"
        else:
            why = (text.strip().splitlines()[0] if text.strip() else type(err).__name__)[:120]
        raise ValueError(
            f"{path} is not a plain weights file ({why}); refusing to load it. "
            "Only state dicts saved by biossl can be loaded."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors; refusing to load it.")
    return state
