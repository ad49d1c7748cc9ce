"""How well a config's priors cover a dataset's boxes, and priors fitted to raise it.

A ground-truth box is *covered* when some prior overlaps it at IoU >= the matching
threshold (``loss.iou_threshold``): only then can it have positives beyond the one prior
the matcher forces on it. Coverage is measured at the model's input size, on the boxes
of the training sets normalised by their images, against the priors the model
generates for its real feature maps.

Fitting keeps the network (feature maps, steps, clipping) and searches SSD's prior
parametrisation per feature map: a min size, the second square's max size (on every
map or on none) and up to three aspect ratios, under a cap on the prior count. The
search maximises coverage directly (then the mean best IoU) by coordinate ascent over
the maps on a seeded sample of the boxes, so it is deterministic. It is fast because
a prior shape's best IoU with a box is reached at the grid centre nearest the box's
centre: every (map, shape) pair is one vector over the boxes (:class:`ShapeScorer`),
exact against the generated priors.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from layers.priors import MapGrid, PriorGenerator, location_shapes, map_grids
from utils.boxes import box_iou, box_iou_np, cxcywh_to_xyxy
from utils.config import PriorConfig

# Box sizes (square root of the area, in input pixels) reported apart.
SIZE_EDGES = (0, 16, 32, 64, 128, 256, float("inf"))


@dataclass
class Coverage:
    """``covered``: share of boxes with a prior at IoU >= ``threshold``;
    ``mean_best_iou``: mean over boxes of the best prior IoU; ``by_size``: per size
    band ``(low, high, boxes, covered share)``; ``num_priors``."""

    covered: float
    mean_best_iou: float
    by_size: list[tuple[float, float, int, float]]
    num_priors: int
    threshold: float

    def describe(self, name: str) -> str:
        """A table: the totals, then coverage per size band."""
        lines = [
            f"{name}: {self.num_priors} priors, {self.covered:.2%} of the boxes covered at "
            f"IoU >= {self.threshold:g}, mean best IoU {self.mean_best_iou:.3f}"
        ]
        for low, high, count, covered in self.by_size:
            band = f"{low:g}-{high:g} px" if high != float("inf") else f">= {low:g} px"
            lines.append(f"  {band:<14}{count:>8} boxes  {covered:>8.2%} covered")
        return "\n".join(lines)


def best_prior_iou(boxes_xyxy: Tensor, priors_cxcywh: Tensor, chunk: int = 2048) -> Tensor:
    """``[G]`` the highest IoU of each normalised xyxy box ``[G, 4]`` with any prior."""
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh.float())
    best = [
        box_iou(boxes_xyxy[start : start + chunk].float(), priors_xyxy).max(dim=1).values
        for start in range(0, boxes_xyxy.shape[0], chunk)
    ]
    return torch.cat(best) if best else torch.zeros(0)


def prior_coverage(
    boxes_xyxy: Tensor, priors_cxcywh: Tensor, *, threshold: float, image_size: int
) -> Coverage:
    """The coverage of normalised boxes ``[G, 4]`` by priors ``[P, 4]``."""
    best = best_prior_iou(boxes_xyxy, priors_cxcywh)
    covered = best >= threshold
    sides = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    sides = sides.clamp(min=0).sqrt() * image_size
    by_size = []
    for low, high in itertools.pairwise(SIZE_EDGES):
        band = (sides >= low) & (sides < high)
        count = int(band.sum())
        if count:
            by_size.append((low, high, count, float(covered[band].float().mean())))
    return Coverage(
        covered=float(covered.float().mean()) if len(best) else float("nan"),
        mean_best_iou=float(best.mean()) if len(best) else float("nan"),
        by_size=by_size,
        num_priors=int(priors_cxcywh.shape[0]),
        threshold=threshold,
    )


class ShapeScorer:
    """The IoU of every box with a prior of a given shape on one feature map, exactly.

    Whatever a prior's shape, its best placement for a box is the grid centre nearest
    the box's centre in x and in y (the overlap in each axis only shrinks as the centres
    part), so a shape's best IoU with each box needs no search over the priors: one
    vector per (map, shape), cached, from which every candidate setting is a maximum.
    """

    def __init__(self, boxes_xyxy: Tensor, grids: Sequence[MapGrid], *, clip: bool) -> None:
        boxes = boxes_xyxy.double().numpy()
        self.width = boxes[:, 2] - boxes[:, 0]
        self.height = boxes[:, 3] - boxes[:, 1]
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        self.clip = clip
        self.grids = list(grids)
        # [N, 4] per map: each box relative to the centre of its nearest prior.
        self.relative_boxes = []
        for grid in self.grids:
            offset_x = self._offset(centre_x, grid.spans_x, grid.columns)
            offset_y = self._offset(centre_y, grid.spans_y, grid.rows)
            self.relative_boxes.append(
                np.stack(
                    [
                        offset_x - self.width / 2,
                        offset_y - self.height / 2,
                        offset_x + self.width / 2,
                        offset_y + self.height / 2,
                    ],
                    axis=-1,
                )
            )
        self._cache: dict[tuple[int, float, float], np.ndarray] = {}

    def _offset(self, centres: np.ndarray, spans: float, cells: int) -> np.ndarray:
        """Distance from each centre to the nearest grid centre (:class:`MapGrid`)."""
        nearest = (np.clip(np.round(centres * spans - 0.5), 0, cells - 1) + 0.5) / spans
        if self.clip:
            nearest = np.clip(nearest, 0.0, 1.0)
        return np.abs(centres - nearest)

    @property
    def num_boxes(self) -> int:
        return self.width.shape[0]

    def iou(
        self, map_index: int, width: np.ndarray | float, height: np.ndarray | float
    ) -> np.ndarray:
        """``[N]`` each box's IoU with a ``width x height`` prior (normalised; arrays
        give one shape per box) at its nearest centre of map ``map_index``."""
        if self.clip:
            width, height = np.minimum(width, 1.0), np.minimum(height, 1.0)
        half_width, half_height = np.asarray(width) / 2, np.asarray(height) / 2
        prior = np.stack(
            np.broadcast_arrays(-half_width, -half_height, half_width, half_height), axis=-1
        )
        return box_iou_np(self.relative_boxes[map_index], prior)

    def shape_iou(self, map_index: int, width: float, height: float) -> np.ndarray:
        """:meth:`iou` of one shape for every box, cached."""
        key = (map_index, round(width, 9), round(height, 9))
        if key not in self._cache:
            self._cache[key] = self.iou(map_index, width, height)
        return self._cache[key]


def grid_limit(
    boxes_xyxy: Tensor,
    *,
    image_size: int,
    map_sizes: Sequence[tuple[int, int]],
    steps: Sequence[float] | None,
    threshold: float,
    clip: bool = True,
) -> float:
    """About the most any prior settings can cover on these feature maps: the share of
    boxes that a prior of *some* shape (a fine grid from half to three times the box's
    width and height, its own shape included) reaches at IoU >= ``threshold`` from the
    box's nearest centre on the best map. Priors only choose shapes; where their centres
    sit is the network's grid."""
    if boxes_xyxy.shape[0] == 0:
        return float("nan")
    scorer = ShapeScorer(boxes_xyxy, map_grids(image_size, map_sizes, steps), clip=clip)
    factors = np.unique(np.concatenate([np.geomspace(0.5, 3.0, 31), [1.0]]))
    best = np.zeros(scorer.num_boxes)
    for index in range(len(scorer.grids)):
        for width_factor, height_factor in itertools.product(factors, factors):
            iou = scorer.iou(index, scorer.width * width_factor, scorer.height * height_factor)
            np.maximum(best, iou, out=best)
    return float((best >= threshold).mean())


def generate_priors(
    priors: PriorConfig, image_size: int, map_sizes: Sequence[tuple[int, int]]
) -> Tensor:
    """``[P, 4]`` the priors ``priors`` gives on these maps (the model's generator)."""
    return PriorGenerator.from_config(priors)(image_size, list(map_sizes))


# What the search chooses from, per feature map: the min size on a geometric grid from
# 2 % to 100 % of the input (then refined around the choice), the second square's
# max_size / min_size, and up to three aspect ratios (each gives two priors).
SIZE_RANGE = (0.02, 1.0)
SIZE_STEPS = 64
MAX_FACTORS = (1.5, 2.0, 2.5, 3.0, 4.0)
MIN_FACTOR = 1.25  # the refinement's lowest max_size / min_size
RATIO_CHOICES = (1.3, 1.6, 2.0, 2.5, 3.0, 4.0)
MAX_RATIOS_PER_MAP = 3
MAX_SWEEPS = 12
# Each map's min size, and max size, at least this many times the previous map's: a
# coarser map (a larger stride) holds larger priors, as in SSD's recipe, and no two maps
# compete for one size.
MIN_GROWTH = 1.2
RESTARTS = 4
SAMPLE = 10000  # boxes the search scores candidates on


@dataclass(frozen=True)
class MapPriors:
    """One feature map's prior settings, in input pixels."""

    min_size: float
    max_size: float | None
    ratios: tuple[float, ...]

    def per_location(self) -> int:
        return len(self.shapes())

    def shapes(self) -> list[tuple[float, float]]:
        """(width, height) in pixels of the priors at one location, as the generator
        makes them (:func:`layers.priors.location_shapes`)."""
        return location_shapes(
            (self.min_size, self.min_size),
            None if self.max_size is None else (self.max_size, self.max_size),
            self.ratios,
        )


# The search's single shapes, in pixels, from the one definition of a prior's shape.
def _square(min_size: float) -> tuple[float, float]:
    return location_shapes((min_size, min_size), None, ())[0]


def _second_square(min_size: float, max_size: float) -> tuple[float, float]:
    return location_shapes((min_size, min_size), (max_size, max_size), ())[1]


def _ratio_pair(min_size: float, ratio: float) -> list[tuple[float, float]]:
    return location_shapes((min_size, min_size), None, (ratio,))[1:]


def map_settings(priors: PriorConfig) -> list[MapPriors]:
    max_sizes = priors.max_sizes or [None] * len(priors.min_sizes)
    return [
        MapPriors(float(low), None if high is None else float(high), tuple(map(float, ratios)))
        for low, high, ratios in zip(priors.min_sizes, max_sizes, priors.aspect_ratios, strict=True)
    ]


def config_of_settings(base: PriorConfig, settings: Sequence[MapPriors]) -> PriorConfig:
    with_max = settings[0].max_size is not None
    return dataclasses.replace(
        base,
        min_sizes=[item.min_size for item in settings],
        max_sizes=[item.max_size for item in settings] if with_max else None,
        aspect_ratios=[list(item.ratios) for item in settings],
    )


class PriorSearch:
    """Coordinate ascent over the feature maps' settings: each move replaces one map's
    settings (or lowers one map's aspect-ratio count to give its priors to another) by
    the best on the grids, given the other maps' priors; moves are taken while they
    raise the covered count, then the sum of best IoUs; all ties go to the first
    candidate, so the result depends only on the boxes. Min sizes, and max sizes, grow
    from map to map by at least ``growth`` (a move stays between its neighbours')."""

    def __init__(
        self,
        scorer: ShapeScorer,
        *,
        image_size: int,
        threshold: float,
        max_priors: int,
        growth: float = MIN_GROWTH,
    ) -> None:
        self.scorer = scorer
        self.image_size = image_size
        self.threshold = threshold
        self.max_priors = max_priors
        self.growth = growth
        self.locations = [grid.rows * grid.columns for grid in scorer.grids]
        self.subsets = [
            subset
            for count in range(MAX_RATIOS_PER_MAP + 1)
            for subset in itertools.combinations(range(len(RATIO_CHOICES)), count)
        ]

    def score(self, vector: np.ndarray) -> float:
        """Covered count first, the sum of best IoUs (< count + 1) to break ties."""
        return float((vector >= self.threshold).sum()) + float(vector.sum()) / (vector.shape[0] + 1)

    def _iou(self, index: int, *shapes: tuple[float, float]) -> np.ndarray:
        """The best IoU of each box with these pixel shapes on map ``index``."""
        scale = 1.0 / self.image_size
        vectors = [self.scorer.shape_iou(index, w * scale, h * scale) for w, h in shapes]
        return vectors[0] if len(vectors) == 1 else np.max(vectors, axis=0)

    def vector(self, index: int, item: MapPriors) -> np.ndarray:
        return self._iou(index, *item.shapes())

    def count(self, settings: Sequence[MapPriors]) -> int:
        return sum(
            locations * item.per_location()
            for locations, item in zip(self.locations, settings, strict=True)
        )

    def best_for_map(
        self,
        index: int,
        others: np.ndarray,
        budget: int,
        *,
        with_max: bool,
        sizes: np.ndarray,
        factors: Sequence[float],
        most_ratios: int = MAX_RATIOS_PER_MAP,
        max_bounds: tuple[float, float] = (0.0, math.inf),
    ) -> tuple[float, MapPriors] | None:
        """The best settings for map ``index`` with at most ``budget`` priors there,
        given the best IoUs ``others`` of the other maps, with a max size (if any) within
        ``max_bounds``; ``None`` if none fit."""
        squares_per_location = 2 if with_max else 1
        if self.locations[index] * squares_per_location > budget:
            return None
        sizes = np.unique(np.round(sizes, 2))
        squares = np.stack([self._iou(index, _square(a)) for a in sizes])
        base = np.maximum(others, squares)[:, None]  # [sizes, 1 or factors, N]
        if with_max:
            second = [
                [self._iou(index, _second_square(a, round(a * f, 2))) for f in factors]
                for a in sizes
            ]
            base = np.maximum(base, np.stack(second))
        pairs = np.stack(
            [[self._iou(index, *_ratio_pair(a, ratio)) for ratio in RATIO_CHOICES] for a in sizes]
        )  # [sizes, ratios, N]
        allowed = np.ones((len(sizes), len(factors) if with_max else 1), dtype=bool)
        if with_max:
            max_sizes = np.round(sizes[:, None] * np.asarray(factors)[None, :], 2)
            allowed = (max_sizes >= max_bounds[0]) & (max_sizes <= max_bounds[1])
            if not allowed.any():
                return None
        best: tuple[float, MapPriors] | None = None
        denominator = others.shape[0] + 1
        for subset in self.subsets:
            per_location = squares_per_location + 2 * len(subset)
            if len(subset) > most_ratios or self.locations[index] * per_location > budget:
                continue
            vectors = (
                base
                if not subset
                else np.maximum(base, pairs[:, list(subset)].max(axis=1)[:, None])
            )
            scores = (vectors >= self.threshold).sum(axis=-1) + vectors.sum(axis=-1) / denominator
            scores = np.where(allowed, scores, -np.inf)
            flat = int(np.argmax(scores))
            size_index, factor_index = np.unravel_index(flat, scores.shape)
            if best is None or scores.flat[flat] > best[0]:
                min_size = float(sizes[size_index])
                max_size = round(min_size * float(factors[factor_index]), 2) if with_max else None
                ratios = tuple(RATIO_CHOICES[choice] for choice in subset)
                best = (float(scores.flat[flat]), MapPriors(min_size, max_size, ratios))
        return best

    def run(self, settings: list[MapPriors]) -> tuple[float, list[MapPriors]]:
        with_max = settings[0].max_size is not None
        coarse = np.geomspace(
            SIZE_RANGE[0] * self.image_size, SIZE_RANGE[1] * self.image_size, SIZE_STEPS
        )
        vectors = [self.vector(index, item) for index, item in enumerate(settings)]
        current = self.score(np.max(vectors, axis=0))
        for _sweep in range(MAX_SWEEPS):
            improved = False
            for index in range(len(settings)):
                fine = settings[index].min_size * np.geomspace(0.95, 1.05, 11)
                factor = (settings[index].max_size or 0) / settings[index].min_size
                near = factor * np.geomspace(0.9, 1.1, 5) if with_max else []
                factors = sorted({*MAX_FACTORS, *(float(f) for f in near if f >= MIN_FACTOR)})
                proposal = self._move(
                    settings, vectors, index, np.concatenate([coarse, fine]), factors, with_max
                )
                if proposal is not None and proposal[0] > current + 1e-9:
                    current, settings[index] = proposal
                    vectors[index] = self.vector(index, settings[index])
                    improved = True
            if not improved:
                trade = self._trade(settings, vectors, current, coarse, with_max)
                if trade is None:
                    break
                current, settings, vectors = trade
        return current, settings

    def _others(self, vectors: Sequence[np.ndarray], skip: Sequence[int]) -> np.ndarray:
        rest = [vector for index, vector in enumerate(vectors) if index not in skip]
        return np.max(rest, axis=0) if rest else np.zeros(self.scorer.num_boxes)

    def _move(
        self,
        settings: Sequence[MapPriors],
        vectors: Sequence[np.ndarray],
        index: int,
        sizes: np.ndarray,
        factors: Sequence[float],
        with_max: bool,
        most_ratios: int = MAX_RATIOS_PER_MAP,
    ) -> tuple[float, MapPriors] | None:
        """Map ``index``'s best settings with the budget the other maps leave."""
        budget = (
            self.max_priors
            - self.count(settings)
            + self.locations[index] * settings[index].per_location()
        )
        others = self._others(vectors, [index])
        # Sizes grow with the maps' strides (finer maps, smaller priors): between the
        # neighbours' by the growth factor (the starts are spread to allow it).
        lower, upper = self._bounds([item.min_size for item in settings], index)
        if lower <= upper:
            inside = sizes[(sizes >= lower) & (sizes <= upper)]
            sizes = np.concatenate(
                [inside, [value for value in (lower, upper) if 0 < value < math.inf]]
            )
        max_bounds = (0.0, math.inf)
        if with_max:
            max_bounds = self._bounds([item.max_size or 0.0 for item in settings], index)
        return self.best_for_map(
            index,
            others,
            budget,
            with_max=with_max,
            sizes=sizes,
            factors=factors,
            most_ratios=most_ratios,
            max_bounds=max_bounds,
        )

    def _bounds(self, values: Sequence[float], index: int) -> tuple[float, float]:
        """The range map ``index``'s value may take between its neighbours' values."""
        lower = round(values[index - 1] * self.growth, 2) if index > 0 else 0.0
        upper = round(values[index + 1] / self.growth, 2) if index + 1 < len(values) else math.inf
        return lower, upper

    def _trade(
        self,
        settings: Sequence[MapPriors],
        vectors: Sequence[np.ndarray],
        current: float,
        sizes: np.ndarray,
        with_max: bool,
    ) -> tuple[float, list[MapPriors], list[np.ndarray]] | None:
        """The best move of priors between two maps: one map gets fewer aspect ratios
        (its best settings with that many), another the best settings the freed budget
        allows; ``None`` if none raises the score."""
        best: tuple[float, list[MapPriors]] | None = None
        for giver in range(len(settings)):
            for most in range(len(settings[giver].ratios)):
                reduced = self._move(settings, vectors, giver, sizes, MAX_FACTORS, with_max, most)
                if reduced is None:
                    continue
                trial = list(settings)
                trial[giver] = reduced[1]
                trial_vectors = list(vectors)
                trial_vectors[giver] = self.vector(giver, reduced[1])
                for taker in range(len(settings)):
                    if taker == giver:
                        continue
                    grown = self._move(trial, trial_vectors, taker, sizes, MAX_FACTORS, with_max)
                    if (
                        grown is not None
                        and grown[0] > current + 1e-9
                        and (best is None or grown[0] > best[0])
                    ):
                        final = list(trial)
                        final[taker] = grown[1]
                        best = (grown[0], final)
        if best is None:
            return None
        return best[0], best[1], [self.vector(index, item) for index, item in enumerate(best[1])]


def _starts(base: PriorConfig, search: PriorSearch) -> list[list[MapPriors]]:
    """Where the search starts: the base settings, and the base with the second square
    toggled, aspect ratios dropped from the maps with most locations until it fits."""
    starts = []
    for settings in (
        map_settings(base),
        [
            MapPriors(
                item.min_size,
                None if item.max_size is not None else round(item.min_size * 2, 2),
                item.ratios,
            )
            for item in map_settings(base)
        ],
    ):
        order = sorted(range(len(settings)), key=lambda index: -search.locations[index])
        while search.count(settings) > search.max_priors:
            trimmable = [index for index in order if settings[index].ratios]
            if not trimmable:
                break
            item = settings[trimmable[0]]
            settings[trimmable[0]] = dataclasses.replace(item, ratios=item.ratios[:-1])
        if search.count(settings) <= search.max_priors:
            starts.append(spread(settings, search.growth))
    return starts


def _grown(values: Sequence[float], growth: float) -> list[float]:
    """``values`` raised where needed so that each is at least ``growth`` times the
    previous one (rounded to 0.01 px, as the search's sizes)."""
    grown: list[float] = []
    for value in values:
        grown.append(max(value, math.ceil(grown[-1] * growth * 100) / 100) if grown else value)
    return grown


def spread(settings: Sequence[MapPriors], growth: float) -> list[MapPriors]:
    """``settings`` with min sizes, and max sizes, growing by at least ``growth`` from
    map to map (each raised where needed); a max size stays above its min size."""
    min_sizes = _grown([item.min_size for item in settings], growth)
    if settings[0].max_size is None:
        return [
            dataclasses.replace(item, min_size=size)
            for item, size in zip(settings, min_sizes, strict=True)
        ]
    ratios = [(item.max_size or 0.0) / item.min_size for item in settings]
    max_sizes = _grown(
        [round(size * ratio, 2) for size, ratio in zip(min_sizes, ratios, strict=True)], growth
    )
    return [
        MapPriors(low, high, item.ratios)
        for item, low, high in zip(settings, min_sizes, max_sizes, strict=True)
    ]


def fit_priors(
    boxes_xyxy: Tensor,
    base: PriorConfig,
    *,
    image_size: int,
    map_sizes: Sequence[tuple[int, int]],
    threshold: float,
    max_priors: int,
    seed: int = 0,
    sample: int = SAMPLE,
    restarts: int = RESTARTS,
    growth: float = MIN_GROWTH,
) -> tuple[PriorConfig, Coverage]:
    """Prior settings with at most ``max_priors`` priors that cover as many of the boxes
    as the search finds: per map a min size, the second square's max size (all maps
    or none) and up to three aspect ratios, chosen by coordinate ascent (see
    :class:`PriorSearch`) on a seeded sample of ``sample`` boxes, from the base settings
    and from the base with the second square toggled, min and max sizes growing by at
    least ``growth`` from map to map. Returns them (the base's steps, clipping and
    variances) and their coverage of all the boxes.

    Raises:
        ValueError: no settings fit in ``max_priors`` (one prior per location).
    """
    generator = np.random.default_rng(seed)
    if boxes_xyxy.shape[0] > sample:
        chosen = np.sort(generator.choice(boxes_xyxy.shape[0], sample, replace=False))
        sampled = boxes_xyxy[torch.from_numpy(chosen)]
    else:
        sampled = boxes_xyxy
    scorer = ShapeScorer(sampled, map_grids(image_size, map_sizes, base.steps), clip=base.clip)
    search = PriorSearch(
        scorer, image_size=image_size, threshold=threshold, max_priors=max_priors, growth=growth
    )
    starts = _starts(base, search)
    if not starts:
        raise ValueError(
            f"at most {max_priors} priors were asked for, but these feature maps have "
            f"{sum(search.locations)} locations and need at least one prior at each"
        )
    score, settings = max((search.run(start) for start in starts), key=lambda result: result[0])
    # Iterated local search: restart from the best settings with the min sizes shaken
    # (each by up to 25 %, the maps' order kept), keep what scores higher.
    for _ in range(restarts):
        shaken = sorted(
            round(item.min_size * float(generator.uniform(0.8, 1.25)), 2) for item in settings
        )
        start = spread(
            [
                MapPriors(
                    size,
                    None
                    if item.max_size is None
                    else round(size * item.max_size / item.min_size, 2),
                    item.ratios,
                )
                for size, item in zip(shaken, settings, strict=True)
            ],
            search.growth,
        )
        result = search.run(start)
        if result[0] > score + 1e-9:
            score, settings = result
    fitted = config_of_settings(base, settings)
    priors = generate_priors(fitted, image_size, map_sizes)
    coverage = prior_coverage(boxes_xyxy, priors, threshold=threshold, image_size=image_size)
    return fitted, coverage


def ssd_rule_priors(base: PriorConfig, image_size: int, num_maps: int) -> PriorConfig:
    """SSD's recipe for ``num_maps`` maps: min sizes 10 % then 20 % to 90 % of the
    input, each max size the next min size, ratios 2 and 3 (2 on the first and last
    two maps), steps from the map sizes; the base's clipping and variances."""
    fractions = [0.1, *np.linspace(0.2, 0.9, num_maps).tolist()] if num_maps > 1 else [0.2, 0.9]
    sizes = [round(fraction * image_size, 2) for fraction in fractions]
    ratios = [
        [2.0] if index == 0 or index >= num_maps - 2 else [2.0, 3.0] for index in range(num_maps)
    ]
    return dataclasses.replace(
        base,
        min_sizes=sizes[:num_maps],
        max_sizes=sizes[1 : num_maps + 1],
        aspect_ratios=ratios,
        steps=None,
    )
