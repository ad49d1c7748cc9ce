import dataclasses

import pytest
import torch
import yaml

from engine.prior_fitting import fit_priors, generate_priors, grid_limit, prior_coverage
from models.build import build_model, measure_feature_map_sizes
from tests.conftest import REPO_ROOT
from tools.fit_priors import fragment, training_boxes
from utils.config import PriorConfig, load_config, merge_dict

# Two priors: the top-left and bottom-right quarters of the image.
PRIORS = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])


def test_coverage_of_a_hand_made_case():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 0.5, 0.5],  # prior 0 exactly: IoU 1
            [0.5, 0.5, 1.0, 1.0],  # prior 1 exactly: IoU 1
            [0.0, 0.0, 0.25, 0.25],  # inside prior 0: IoU 0.0625 / 0.25 = 0.25
        ]
    )
    coverage = prior_coverage(boxes, PRIORS, threshold=0.5, image_size=100)
    assert coverage.covered == pytest.approx(2 / 3)
    assert coverage.mean_best_iou == pytest.approx((1 + 1 + 0.25) / 3)
    assert coverage.num_priors == 2
    # Sides of 50, 50 and 25 pixels at 100 px.
    assert coverage.by_size == [(16, 32, 1, 0.0), (32, 64, 2, 1.0)]
    assert prior_coverage(boxes, PRIORS, threshold=0.25, image_size=100).covered == 1.0


def test_grid_limit_is_the_best_any_prior_shape_can_do():
    boxes = torch.tensor(
        [
            [0.15, 0.15, 0.35, 0.35],  # centred on the 2x2 map's first centre (0.25, 0.25)
            [0.4, 0.4, 0.6, 0.6],  # 0.25 from every 2x2 centre in x and y: no overlap
        ]
    )
    assert grid_limit(boxes, image_size=100, map_sizes=[(2, 2)], steps=None, threshold=0.5) == 0.5
    # A 10x10 map has a centre at (0.45, 0.45): a 0.2 box moved by 0.05 in x and y keeps
    # 0.15^2 of its area, IoU 0.0225 / (0.08 - 0.0225) = 0.391; at (0.55, 0.55) the same.
    two_maps = [(2, 2), (10, 10)]
    assert grid_limit(boxes, image_size=100, map_sizes=two_maps, steps=None, threshold=0.39) == 1
    assert grid_limit(boxes, image_size=100, map_sizes=two_maps, steps=None, threshold=0.4) == 0.5


TINY_SHAPES = [
    "data.shapes_train_images=16",
    "data.shapes_val_images=6",
    "data.shapes_image_size=96",
    "model.image_size=96",
    "loss.iou_threshold=0.5",
    "model.pyramid=[[512, 3, 1, 1], [512, 3, 2, 1], [256, 3, 2, 1], [256, 3, 1, 0]]",
    "priors.min_sizes=[10, 24, 48, 72]",
    "priors.max_sizes=[24, 48, 72, 96]",
    "priors.aspect_ratios=[[2], [2], [2], [2]]",
]


def test_fitting_is_deterministic_and_its_fragment_builds_a_model(tiny_shapes_root):
    config = load_config(
        REPO_ROOT / "configs" / "quickstart_shapes.yaml",
        [f"data.root={tiny_shapes_root}", *TINY_SHAPES],
    )
    model = build_model(config, load_weights=False)
    maps = measure_feature_map_sizes(model.features, 96)
    boxes = training_boxes(config)
    before = prior_coverage(boxes, model.priors_cxcywh, threshold=0.5, image_size=96)
    settings = dict(image_size=96, map_sizes=maps, threshold=0.5, seed=3, sample=20)
    fitted, after = fit_priors(boxes, config.priors, max_priors=before.num_priors, **settings)
    again, _ = fit_priors(boxes, config.priors, max_priors=before.num_priors, **settings)
    assert fitted == again
    assert isinstance(fitted, PriorConfig) and after.num_priors <= before.num_priors
    assert after.covered >= before.covered
    assert generate_priors(fitted, 96, maps).shape[0] == after.num_priors
    # The fragment loads through the config system and builds a model whose head
    # predicts one box per fitted prior (build_model checks that the two agree).
    text = fragment(dataclasses.replace(config, priors=fitted), "test", before, after)
    merged = merge_dict(config, yaml.safe_load(text), source="fragment")
    assert merged.priors == fitted
    assert build_model(merged, load_weights=False).priors_cxcywh.shape[0] == after.num_priors
