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
from utils.files import WriteError, atomic_write

if TYPE_CHECKING:
    import torch

# Raise when the layout changes in a way older code cannot read; files without the key
# were written before it existed, in the layout of version 1.
FORMAT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read; the message names the file. ``foreign``: the
    file holds tensors, but not in this project's layout (another project's weights)."""

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign


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
    """Write ``state`` to ``path`` atomically (:func:`utils.files.atomic_write`): a
    crash, a kill or a full disk never leaves a truncated checkpoint behind, ``path``
    holds the old checkpoint or the new one.

    Raises:
        CheckpointError: the file could not be written (the message names the path and
            the cause, e.g. no space left on device); the temporary file is removed and
            the previous checkpoint is left as it was.
    """
    import torch

    try:
        atomic_write(path, lambda handle: torch.save(state, handle), what="checkpoint")
    except WriteError as error:
        raise CheckpointError(str(error)) from error.__cause__


def read_tensor_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """A file written by ``torch.save``, read with ``weights_only=True`` onto the CPU: only
    tensors and plain containers are rebuilt, nothing in the file can run code.

    Raises:
        CheckpointError: missing; not a ``torch.save`` zip of tensors (another format,
            random bytes, truncated); or holding objects that are not allowed (the
            object named). The message says so plainly and never suggests loading it
            some less safe way.
    """
    import pickle
    import re
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(error))
        if isinstance(error, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f"{path}: not a {what} this project can load safely: it holds an object "
                f"that is not a tensor or a plain container ({found.group(1)}), so it "
                "was refused without running anything"
            ) from None
        kind = "a truncated or damaged" if zipfile.is_zipfile(path) else "not a"
        if kind == "not a" and path.stat().st_size > 0:
            with path.open("rb") as handle:
                if handle.read(4).startswith(b"PK"):
                    kind = "a truncated or damaged"
        raise CheckpointError(
            f"{path}: {kind} PyTorch {what} (torch.save's zip archive of tensors); "
            "this project cannot read it"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of this project, on the CPU (:func:`read_tensor_file`).

    Raises:
        CheckpointError: unreadable (see :func:`read_tensor_file`), or tensors that are
            not a checkpoint of this project (``foreign``), or a newer format.
    """
    state = read_tensor_file(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(
            f"{path}: not a checkpoint of this project (no model/config)", foreign=True
        )
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
            if not error.foreign:
                raise
            if config_path is None:
                raise CheckpointError(
                    f"{error}; for weights without a config (e.g. fssd.pytorch) give --config too"
                ) from error
    if config_path is not None:
        return load_config(config_path, overrides), checkpoint
    if checkpoint is None:
        raise ConfigError("give --config, or --checkpoint of this project (it holds its config)")
    return checkpoint_config(checkpoint, overrides, source=checkpoint_path), checkpoint


def checkpoint_config(
    checkpoint: dict[str, Any], overrides: list[str], *, source: str | Path
) -> Config:
    """The config a project checkpoint holds, with ``overrides`` applied (``source``
    names the file in errors)."""
    config = config_from_dict(checkpoint["config"], source=str(source))
    for override in overrides:
        config = apply_override(config, override)
    return config


def read_project_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """:func:`load_checkpoint`, or None when ``path`` holds the weights of another
    project (an fssd.pytorch state dict), which are read when they are loaded.

    Raises:
        CheckpointError: the file cannot be read at all."""
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        if not error.foreign:
            raise
        return None


def channel_widths(checkpoint: dict[str, Any] | None) -> dict[str, int]:
    """The channel widths a pruned checkpoint stores (empty for an unpruned model)."""
    return dict((checkpoint or {}).get("channel_widths") or {})


def pruning_rounds(checkpoint: dict[str, Any] | None) -> list[dict[str, Any]]:
    """How a checkpoint's model was pruned, one entry per ``prune.py`` round, oldest
    first (empty for an unpruned model). Training from a pruned checkpoint carries
    them on, so a second round knows the first."""
    checkpoint = checkpoint or {}
    if "pruning_rounds" in checkpoint:
        return list(checkpoint["pruning_rounds"])
    return [checkpoint["pruning"]] if "pruning" in checkpoint else []


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
