"""Checkpoints: the one module that writes and reads them; written atomically, read with
``weights_only=True``.

Every checkpoint (:func:`make_checkpoint`) holds ``format_version``, the resolved
config (which records the architecture, widths and pixel format), the class names, the
channel widths of a pruned model and the model's weights. A training checkpoint adds the
optimizer, scheduler and scaler states, the global iteration, the best metric and the
random states; a pruned one adds how it was pruned.

torch is imported where a checkpoint is read or written: resolving a config
(:func:`config_and_checkpoint` without a checkpoint) stays torch-free for
``test.py --eval-only``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.config import (
    Config,
    ConfigError,
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
)
from utils.errors import UserError

if TYPE_CHECKING:
    import torch

# Raise when the layout changes in a way older code cannot read; files without the key
# were written before it existed, in the layout of version 1.
FORMAT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def make_checkpoint(
    *,
    config: Config,
    model_state: dict[str, torch.Tensor],
    class_names: list[str],
    channel_widths: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint's contents: the fields every checkpoint has, plus ``extra`` (the
    training state, or how a model was pruned)."""
    return {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "class_names": list(class_names),
        "channel_widths": dict(channel_widths or {}),
        "model": model_state,
        **extra,
    }


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename, so a crash or
    a full disk never leaves a truncated checkpoint behind."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with temporary.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents on the CPU.

    Raises:
        CheckpointError: missing, truncated or not a checkpoint of this project.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model/config)")
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this code reads "
            f"({FORMAT_VERSION}); update the code"
        )
    return state


def config_and_checkpoint(
    config_path: str | Path | None, overrides: list[str], checkpoint_path: str | Path | None
) -> tuple[Config, dict[str, Any] | None]:
    """What the evaluation scripts run: the config from ``config_path``, else the one
    the checkpoint holds (with ``overrides`` either way), and the checkpoint when it is
    one of this project (None for weights of another project, which need a config).
    """
    checkpoint = None
    if checkpoint_path is not None:
        try:
            checkpoint = load_checkpoint(checkpoint_path)
        except CheckpointError as error:
            if config_path is None:
                raise CheckpointError(
                    f"{error}; for weights without a config (e.g. fssd.pytorch) give --config too"
                ) from error
    if config_path is not None:
        return load_config(config_path, overrides), checkpoint
    if checkpoint is None:
        raise ConfigError("give --config, or --checkpoint of this project (it holds its config)")
    config = config_from_dict(checkpoint["config"], source=str(checkpoint_path))
    for override in overrides:
        config = apply_override(config, override)
    return config, checkpoint


def read_project_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """:func:`load_checkpoint`, or None when ``path`` is a weights file of another
    project (an fssd.pytorch state dict); errors about it come when it is loaded."""
    try:
        return load_checkpoint(path)
    except CheckpointError:
        return None


def channel_widths(checkpoint: dict[str, Any] | None) -> dict[str, int]:
    """The channel widths a pruned checkpoint stores (empty for an unpruned model)."""
    return dict((checkpoint or {}).get("channel_widths") or {})


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states in checkpoint-safe types."""
    import torch

    numpy_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "numpy_has_gauss": int(numpy_state[3]),
        "numpy_cached_gaussian": float(numpy_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
