"""Trained models from checkpoints: what test.py, demo.py, prune.py, benchmark.py and the
export tool run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.build import build_model
from models.detector import SingleShotDetector
from models.weights import load_detector_weights
from utils.checkpoint import channel_widths, config_and_checkpoint
from utils.config import Config, load_config


def build_trained_model(
    config: Config, weights: str | Path, checkpoint: Mapping[str, Any] | None
) -> SingleShotDetector:
    """The model of a checkpoint (``checkpoint`` is its contents when it is this
    project's, carrying the widths of a pruned model) with its weights loaded from
    ``weights`` (this project's or fssd.pytorch's format)."""
    model = build_model(config, load_weights=False, channel_widths=channel_widths(checkpoint))
    load_detector_weights(model, weights)
    return model


def load_trained_model(
    config_path: str | Path | None, overrides: list[str], checkpoint_path: str | Path
) -> tuple[Config, SingleShotDetector, dict[str, Any] | None]:
    """The config (``config_path``'s, else the checkpoint's, with ``overrides``), the
    checkpoint's model with its weights, and the checkpoint when it is this project's."""
    config, checkpoint = config_and_checkpoint(config_path, overrides, checkpoint_path)
    return config, build_trained_model(config, checkpoint_path, checkpoint), checkpoint


def build_model_to_run(
    config_path: str | Path | None, overrides: list[str], checkpoint_path: str | Path | None
) -> tuple[Config, SingleShotDetector]:
    """The config and model a timing or export tool runs: the checkpoint's (pruned
    widths included), or without one the config's model with random weights."""
    if checkpoint_path is None:
        config = load_config(config_path, overrides)
        return config, build_model(config, load_weights=False)
    config, model, _ = load_trained_model(config_path, overrides, checkpoint_path)
    return config, model
