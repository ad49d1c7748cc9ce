"""Start a detector from another detector's weights when their classes differ.

Everything but the class predictors is carried as it is. In each class predictor (the
head's last conv per feature map, ``A * C`` output channels: prior ``a``'s logit for
class ``c`` is channel ``a * C + c``), the rows of a class are carried to the class of
the same name, the background row to the background; the rows of a class the source
does not have keep the target's fresh initialisation, and the source's classes the
target does not name are dropped. This is the FSSD paper's 07+12+COCO recipe: a model
trained on COCO, fine-tuned on VOC with the class rows of the 20 VOC classes carried.

Names match exactly, then ignoring case, spaces, underscores and hyphens ("dining
table" is "diningtable"), then through :data:`SYNONYMS` (COCO's names for VOC's
classes that differ by more than that).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.weights import WeightsError

logger = logging.getLogger(__name__)

# The same class under two datasets' names: COCO's, then VOC's. Matching is symmetric.
SYNONYMS: tuple[tuple[str, str], ...] = (
    ("airplane", "aeroplane"),
    ("motorcycle", "motorbike"),
    ("couch", "sofa"),
    ("tv", "tvmonitor"),
    ("dining table", "diningtable"),
    ("potted plant", "pottedplant"),
)


class ClassTransferError(WeightsError):
    """The source's classes cannot be carried to the target's as asked."""


def _normal(name: str) -> str:
    return "".join(character for character in name.lower() if character not in " _-")


@dataclass(frozen=True)
class ClassMapping:
    """For each target class (labels 1..C-1, in order) the source label it takes its
    rows from, or None for a new class; ``dropped``: source classes nobody takes."""

    source_names: tuple[str, ...]
    target_names: tuple[str, ...]
    source_labels: tuple[int | None, ...]

    @property
    def carried(self) -> list[tuple[str, str]]:
        """(target name, source name) of every carried class."""
        return [
            (target, self.source_names[label - 1])
            for target, label in zip(self.target_names, self.source_labels, strict=True)
            if label is not None
        ]

    @property
    def new(self) -> list[str]:
        return [
            target
            for target, label in zip(self.target_names, self.source_labels, strict=True)
            if label is None
        ]

    @property
    def dropped(self) -> list[str]:
        taken = {label for label in self.source_labels if label is not None}
        return [name for label, name in enumerate(self.source_names, start=1) if label not in taken]

    def describe(self) -> str:
        """Which classes were carried (with the source's name where it differs), which
        are new and which were dropped."""
        carried = [
            target if target == source else f"{target} <- {source}"
            for target, source in self.carried
        ]
        lines = [f"carried {len(carried)}: {', '.join(carried) or '-'}"]
        lines.append(f"new {len(self.new)}: {', '.join(self.new) or '-'}")
        lines.append(f"dropped {len(self.dropped)}: {', '.join(self.dropped) or '-'}")
        return "; ".join(lines)


def map_classes(
    source_names: Sequence[str],
    target_names: Sequence[str],
    *,
    allow_new: bool = False,
    synonyms: Sequence[tuple[str, str]] = SYNONYMS,
) -> ClassMapping:
    """The source label of each target class, by name (see the module docstring).

    Raises:
        ClassTransferError: a target class has no match and ``allow_new`` is false; no
            class matches at all; two target classes match one source class.
    """
    exact = {name: label for label, name in enumerate(source_names, start=1)}
    normal = {_normal(name): label for label, name in enumerate(source_names, start=1)}
    synonym_of: dict[str, set[str]] = {}
    for first, second in synonyms:
        synonym_of.setdefault(_normal(first), set()).add(_normal(second))
        synonym_of.setdefault(_normal(second), set()).add(_normal(first))
    labels: list[int | None] = []
    for name in target_names:
        label = exact.get(name, normal.get(_normal(name)))
        if label is None:
            matches = sorted(
                normal[other] for other in synonym_of.get(_normal(name), ()) if other in normal
            )
            label = matches[0] if matches else None
        labels.append(label)
    mapping = ClassMapping(tuple(source_names), tuple(target_names), tuple(labels))
    taken: dict[int, str] = {}
    for name, label in zip(target_names, labels, strict=True):
        if label is not None and label in taken:
            raise ClassTransferError(
                f"classes '{taken[label]}' and '{name}' both match the source's "
                f"'{source_names[label - 1]}'; rename one"
            )
        if label is not None:
            taken[label] = name
    if not mapping.carried:
        raise ClassTransferError(
            f"no class of this run ({', '.join(target_names)}) matches one of the "
            f"initialising model's ({', '.join(source_names)}); check the checkpoint"
        )
    if mapping.new and not allow_new:
        raise ClassTransferError(
            f"{len(mapping.new)} classes of this run match none of the initialising "
            f"model's: {', '.join(mapping.new)} (its classes: {', '.join(source_names)}); "
            "fix the names, or allow new classes (train.py --allow-new-classes) to start "
            "them from a fresh head"
        )
    return mapping


def class_predictors(model: nn.Module) -> list[str]:
    """The state-dict prefixes of the head's class predictors: the last conv of each
    ``head.conf`` entry (the depthwise SSDLite predictors end in one too)."""
    prefixes = []
    for index, predictor in enumerate(model.head.conf):
        convs = [
            name for name, module in predictor.named_modules() if isinstance(module, nn.Conv2d)
        ]
        last = convs[-1]
        prefixes.append(f"head.conf.{index}" + (f".{last}" if last else ""))
    return prefixes


def transfer_classes(
    state_dict: Mapping[str, Tensor],
    origin: str,
    *,
    model: nn.Module,
    mapping: ClassMapping,
) -> dict[str, Tensor]:
    """``state_dict`` (a detector of ``mapping.source_names``) with its class predictor
    rows carried into the shapes of ``model`` (one of ``mapping.target_names``): the
    rows of every carried class and the background's from the source, those of a new
    class from ``model``'s own (fresh) weights. The other tensors are passed on as they
    are, for the caller's usual shape check.

    Raises:
        ClassTransferError: a class predictor's size does not fit the class counts.
    """
    source_classes = len(mapping.source_names) + 1
    target_classes = len(mapping.target_names) + 1
    own = model.state_dict()
    # Row c of the target takes row rows[c] of the source (-1: keep the target's own).
    rows = torch.tensor([0, *[-1 if label is None else label for label in mapping.source_labels]])
    carried = dict(state_dict)
    for prefix in class_predictors(model):
        for kind in ("weight", "bias"):
            key = f"{prefix}.{kind}"
            if key not in state_dict or key not in own:
                continue
            given, fresh = state_dict[key], own[key]
            anchors = fresh.shape[0] // target_classes
            if given.shape[0] != anchors * source_classes or given.shape[1:] != fresh.shape[1:]:
                raise ClassTransferError(
                    f"{origin}: '{key}' has shape {list(given.shape)}, which is not "
                    f"{anchors} priors x {source_classes} classes of this model's "
                    f"{list(fresh.shape[1:])}; the checkpoint's class list or prior "
                    "settings do not match its weights"
                )
            source = given.reshape(anchors, source_classes, *given.shape[1:])
            result = fresh.detach().clone().reshape(anchors, target_classes, *fresh.shape[1:])
            take = rows >= 0
            result[:, take] = source[:, rows[take]].to(result.dtype)
            carried[key] = result.reshape(fresh.shape)
    return carried
