"""SSD/FSSD prior (default) boxes.

At every location of every feature map the priors are, in this order: a square of
``min_size``, a square of ``sqrt(min_size * max_size)`` (when ``max_size`` is given),
then for each aspect ratio ``r`` the pair ``(w·√r, h/√r)``, ``(w/√r, h·√r)`` of the
``min_size`` square. Locations run feature map by feature map, row-major over y then x,
which is the order the heads emit their outputs in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from utils.config import PriorConfig

Size2d = int | tuple[int, int]


def _pair(value: Size2d) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def location_shapes(
    min_size: tuple[float, float],
    max_size: tuple[float, float] | None,
    aspect_ratios: Sequence[float],
) -> list[tuple[float, float]]:
    """(width, height) of the priors at one location, in SSD's order: the min-size
    square, the square of side sqrt(min * max) when there is a max size, then per ratio
    ``r`` a wide and a tall box of the min size's area. Sizes are (width, height) pairs
    in any unit (normalised per axis for the generator, pixels for the prior fitting):
    the one definition of a prior's shape."""
    min_w, min_h = min_size
    shapes = [(min_w, min_h)]
    if max_size is not None:
        shapes.append((math.sqrt(min_w * max_size[0]), math.sqrt(min_h * max_size[1])))
    for ratio in aspect_ratios:
        root = math.sqrt(ratio)
        shapes.append((min_w * root, min_h / root))
        shapes.append((min_w / root, min_h * root))
    return shapes


@dataclass(frozen=True)
class MapGrid:
    """Where one feature map's priors sit: ``rows x columns`` centres, the one of cell
    (row ``i``, column ``j``) at ``((j + 0.5) / spans_x, (i + 0.5) / spans_y)`` in
    normalised image coordinates, ``spans`` being how many cell strides span the image
    (the map's size, or image size / step where steps are configured)."""

    rows: int
    columns: int
    spans_x: float
    spans_y: float

    def centres(self) -> Tensor:
        """``[rows, columns, 2]`` float64 (x, y) of the cell centres, unclipped."""
        centre_x = (torch.arange(self.columns, dtype=torch.float64) + 0.5) / self.spans_x
        centre_y = (torch.arange(self.rows, dtype=torch.float64) + 0.5) / self.spans_y
        grid_y, grid_x = torch.meshgrid(centre_y, centre_x, indexing="ij")
        return torch.stack([grid_x, grid_y], dim=-1)


def map_grids(
    image_size: Size2d, feature_map_sizes: Sequence[Size2d], steps: Sequence[float] | None
) -> list[MapGrid]:
    """The prior centre grids of these feature maps: the one definition of where priors
    sit, for the generator and for the prior fitting."""
    image_height, image_width = _pair(image_size)
    grids = []
    for index, map_size in enumerate(feature_map_sizes):
        rows, columns = _pair(map_size)
        if steps is None:
            step_y, step_x = image_height / rows, image_width / columns
        else:
            step_y = step_x = steps[index]
        grids.append(MapGrid(rows, columns, image_width / step_x, image_height / step_y))
    return grids


class PriorGenerator:
    """Generates priors for given image and feature-map sizes.

    Sizes are in input pixels; the priors come back normalised to the image. Feature-map
    sizes are not part of the settings: the model measures them with a dry forward pass.

    Args:
        min_sizes: one per feature map, pixels.
        max_sizes: one per feature map, pixels, or ``None`` for no second square.
        aspect_ratios: per feature map, the ratios ``r`` (>1) each giving two boxes.
        steps: per feature map, the pixel stride of its cells; ``None`` uses
            ``image_size / feature_map_size``. SSD configures them (e.g. 100 and 300 for
            the last two maps at 300), which moves centres slightly off the cell grid.
        clip: clamp every (cx, cy, w, h) component to [0, 1], as SSD and FSSD do.
    """

    def __init__(
        self,
        *,
        min_sizes: Sequence[float],
        max_sizes: Sequence[float] | None,
        aspect_ratios: Sequence[Sequence[float]],
        steps: Sequence[float] | None,
        clip: bool,
    ) -> None:
        num_maps = len(min_sizes)
        lengths = {"aspect_ratios": len(aspect_ratios)}
        if max_sizes is not None:
            lengths["max_sizes"] = len(max_sizes)
        if steps is not None:
            lengths["steps"] = len(steps)
        for name, length in lengths.items():
            if length != num_maps:
                raise ValueError(
                    f"{name} has {length} entries but min_sizes has {num_maps}: "
                    "give one per feature map"
                )
        for ratios in aspect_ratios:
            for ratio in ratios:
                if ratio <= 0:
                    raise ValueError(f"aspect ratios must be positive, got {ratio}")
        if max_sizes is not None:
            for min_size, max_size in zip(min_sizes, max_sizes, strict=True):
                if max_size < min_size:
                    raise ValueError(f"max_size {max_size} is smaller than min_size {min_size}")
        self.min_sizes = [float(size) for size in min_sizes]
        self.max_sizes = None if max_sizes is None else [float(size) for size in max_sizes]
        self.aspect_ratios = [[float(ratio) for ratio in ratios] for ratios in aspect_ratios]
        self.steps = None if steps is None else [float(step) for step in steps]
        self.clip = clip

    @classmethod
    def from_config(cls, priors: PriorConfig) -> PriorGenerator:
        """The generator of a config's ``priors`` section."""
        return cls(
            min_sizes=priors.min_sizes,
            max_sizes=priors.max_sizes,
            aspect_ratios=priors.aspect_ratios,
            steps=priors.steps,
            clip=priors.clip,
        )

    @property
    def num_feature_maps(self) -> int:
        return len(self.min_sizes)

    def num_priors_per_location(self) -> list[int]:
        """Boxes per location for each feature map (what each head must predict)."""
        return [len(self._sizes_at(index, 1, 1)) for index in range(self.num_feature_maps)]

    def num_priors(self, feature_map_sizes: Sequence[Size2d]) -> int:
        """Total prior count for the given feature-map sizes."""
        self._check_maps(feature_map_sizes)
        counts = self.num_priors_per_location()
        total = 0
        for size, count in zip(feature_map_sizes, counts, strict=True):
            height, width = _pair(size)
            total += height * width * count
        return total

    def __call__(self, image_size: Size2d, feature_map_sizes: Sequence[Size2d]) -> Tensor:
        """Priors as ``[P, 4]`` float32 (cx, cy, w, h), normalised to the image.

        Args:
            image_size: input size in pixels, ``int`` or ``(height, width)``.
            feature_map_sizes: per feature map, ``int`` or ``(height, width)``.
        """
        self._check_maps(feature_map_sizes)
        image_height, image_width = _pair(image_size)
        # Float64 throughout, as the reference computes them in Python floats, so the
        # float32 result is bit-identical to it.
        per_map = []
        for index, grid in enumerate(map_grids(image_size, feature_map_sizes, self.steps)):
            map_height, map_width = grid.rows, grid.columns
            centres = grid.centres()  # [H, W, 2]
            sizes = torch.tensor(
                self._sizes_at(index, image_height, image_width), dtype=torch.float64
            )  # [A, 2]
            num_boxes = sizes.shape[0]
            boxes = torch.cat(
                [
                    centres[:, :, None, :].expand(map_height, map_width, num_boxes, 2),
                    sizes[None, None].expand(map_height, map_width, num_boxes, 2),
                ],
                dim=-1,
            )  # [H, W, A, 4]
            per_map.append(boxes.reshape(-1, 4))
        priors = torch.cat(per_map, dim=0)
        if self.clip:
            priors = priors.clamp(min=0.0, max=1.0)
        return priors.to(torch.float32)

    def _sizes_at(self, index: int, image_height: int, image_width: int) -> list[list[float]]:
        """(w, h) of the boxes of one location of feature map ``index``, normalised."""
        max_size = None if self.max_sizes is None else self.max_sizes[index]
        return [
            list(shape)
            for shape in location_shapes(
                (self.min_sizes[index] / image_width, self.min_sizes[index] / image_height),
                None if max_size is None else (max_size / image_width, max_size / image_height),
                self.aspect_ratios[index],
            )
        ]

    def _check_maps(self, feature_map_sizes: Sequence[Size2d]) -> None:
        if len(feature_map_sizes) != self.num_feature_maps:
            raise ValueError(
                f"got {len(feature_map_sizes)} feature maps but the prior settings "
                f"describe {self.num_feature_maps}"
            )
