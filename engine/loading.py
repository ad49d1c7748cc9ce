"""The one way a script or the trainer makes a model: test.py, demo.py, prune.py,
benchmark.py, the export tools and training all come here.

Where each part comes from, in one place:

- the config: ``--config`` with overrides, else the one a project checkpoint holds
  (:func:`utils.checkpoint.config_and_checkpoint`);
- the channel widths: the checkpoint's, else ``model.widths_file``'s, else the full
  model (:func:`models.pruning.resolve_channel_widths`);
- the weights: a weights file (this project's checkpoint or fssd.pytorch's state dict),
  else with ``pretrained`` the config's ``model.weights`` / ``model.backbone_weights``,
  else random.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.build import build_model
from models.class_transfer import map_classes, transfer_classes
from models.detector import SingleShotDetector
from models.weights import load_detector_weights
from utils.checkpoint import channel_widths, config_and_checkpoint
from utils.config import Config, load_config

logger = logging.getLogger(__name__)


def build_detector(
    config: Config,
    *,
    checkpoint: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    class_names: Sequence[str] | None = None,
    allow_new_classes: bool = False,
) -> SingleShotDetector:
    """The detector of ``config`` with the widths of ``checkpoint`` (a project
    checkpoint's contents; None for none or another project's file), its weights read
    from ``weights`` when given, else with ``pretrained`` the config's pretrained
    weights, else random.

    With ``class_names`` (the model's classes) and a ``checkpoint`` of other classes,
    the class predictors' rows are carried by class name
    (:mod:`models.class_transfer`); ``allow_new_classes`` lets classes the checkpoint
    does not have start from the fresh head instead of being an error."""
    model = build_model(
        config,
        load_weights=pretrained and weights is None,
        channel_widths=channel_widths(checkpoint),
    )
    if weights is not None:
        adapt = None
        source_names = (checkpoint or {}).get("class_names")
        if class_names is not None and source_names and list(source_names) != list(class_names):
            mapping = map_classes(source_names, class_names, allow_new=allow_new_classes)
            logger.info("classes from %s: %s", weights, mapping.describe())
            adapt = functools.partial(transfer_classes, model=model, mapping=mapping)
        load_detector_weights(model, weights, adapt)
    return model


def load_model(
    config_path: str | Path | None,
    overrides: list[str],
    checkpoint_path: str | Path | None,
    *,
    pretrained: bool = False,
) -> tuple[Config, SingleShotDetector, dict[str, Any] | None]:
    """The config, the model with ``checkpoint_path``'s weights and the checkpoint's
    contents when it is this project's (None otherwise). Without a checkpoint: the
    config of ``config_path`` (the defaults without one) and a model with the config's
    pretrained weights when ``pretrained``, else random weights."""
    if checkpoint_path is None:
        config, checkpoint = load_config(config_path, overrides), None
    else:
        config, checkpoint = config_and_checkpoint(config_path, overrides, checkpoint_path)
    model = build_detector(
        config, checkpoint=checkpoint, weights=checkpoint_path, pretrained=pretrained
    )
    return config, model, checkpoint
