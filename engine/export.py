"""ONNX export: the network, the network with decoding and softmax, or the whole detector
with its post-processing inside the graph (end to end).

The end-to-end graph takes a ``uint8`` RGB batch ``[B, 3, S, S]`` at the model's input
size and returns, per image, the ``max_detections`` best detections of the same
post-processing as :func:`layers.postprocess.postprocess`: ``boxes`` ``[B, D, 4]``
xyxy in the input's pixels, ``scores`` ``[B, D]`` (descending), ``labels`` ``[B, D]``
(1..C-1) and ``count`` ``[B]`` (rows past an image's count are zeros). Inside it: the
softmax and box decoding (exported from PyTorch), then ONNX ``TopK`` per class
(``pre_nms_topk`` candidates), ``NonMaxSuppression`` per (image, class) with the score
threshold, and a ``TopK`` over each image's survivors for the cap; ties in score go to
the lower prior, then the lower class, as in PyTorch. The optional packages ``onnx``,
``onnxscript`` and ``onnxruntime`` are needed (``requirements-dev.txt``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.box_coding import decode
from models.detector import SingleShotDetector
from utils.config import Config, ConfigError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)
# The exporter's optimiser logs every deduplicated constant and rewrite at INFO.
for _name in ("onnx_ir", "onnxscript"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class DecodedDetector(nn.Module):
    """The detector followed by box decoding and the class softmax (no NMS).

    Returns ``boxes`` ``[B, P, 4]`` normalised xyxy clipped to [0, 1] and ``scores``
    ``[B, P, C]``, as :func:`layers.postprocess.postprocess` computes them before NMS.
    """

    def __init__(self, model: SingleShotDetector, variances: tuple[float, float]) -> None:
        super().__init__()
        self.model = model
        self.variances = variances

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.model(images)
        boxes = decode(loc, self.model.priors_cxcywh, self.variances).clamp(0.0, 1.0)
        return boxes, F.softmax(conf, dim=-1)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    image_size: int,
    *,
    output_names: list[str],
    uint8_input: bool = False,
) -> Path:
    """Write ``model`` (in eval mode) as ONNX with a dynamic batch axis; returns the path."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "ONNX export needs the optional packages onnx and onnxscript "
            "(pip install -r requirements-dev.txt)"
        ) from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.rand(2, 3, image_size, image_size) * 255
    if uint8_input:
        example = example.to(torch.uint8)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["images"],
        output_names=output_names,
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}},
        dynamo=True,
        external_data=False,
    )
    program.save(str(path))
    return path


def postprocess_graph(
    *,
    num_priors: int,
    num_classes: int,
    image_size: int,
    score_threshold: float,
    pre_nms_topk: int,
    nms_iou_threshold: float,
    max_detections: int,
    opset: int,
) -> onnx.ModelProto:
    """An ONNX graph from ``boxes`` ``[B, P, 4]`` (normalised xyxy) and ``scores``
    ``[B, P, C]`` (softmax) to the detections of the module docstring."""
    from onnx import TensorProto, helper

    foreground = num_classes - 1
    per_class = min(pre_nms_topk, num_priors)
    kept = min(max_detections, num_priors * foreground)

    def const(name: str, value: object, dtype: type = np.int64) -> onnx.NodeProto:
        array = np.asarray(value, dtype=dtype)
        tensor = helper.make_tensor(name, _onnx_type(array), array.shape, array.flatten().tolist())
        return helper.make_node("Constant", [], [name], value=tensor)

    nodes = [
        const("c_zero_vec", [0]),
        const("c_two_scalar", 2),
        const("c_one", [1]),
        const("c_classes", [num_classes]),
        const("c_two", [2]),
        const("c_k", [per_class]),
        const("c_keep", [kept]),
        const("c_fg", foreground),
        const("c_minus_one_vec", [-1]),
        const("c_flat_shape", [-1, per_class]),
        const("c_nms_shape", [-1, per_class, 4]),
        const("c_nms_scores_shape", [-1, 1, per_class]),
        const("c_dense_width", [num_priors * foreground]),
        const("c_max_out", [per_class]),
        const("c_iou", [nms_iou_threshold], np.float32),
        const("c_score", [score_threshold], np.float32),
        const("c_ranks", np.arange(per_class, 0, -1), np.float32),
        const("c_half", [0.5], np.float32),
        const("c_scale", [float(image_size)], np.float32),
        const("c_zero_f", 0.0, np.float32),
        const("c_zero_i", 0),
        const("c_no_score", [-1.0], np.float32),
        const("c_label_offset", 1),
        # Foreground scores per class: [B, C-1, P]; the best K per class.
        helper.make_node("Slice", ["scores", "c_one", "c_classes", "c_two"], ["fg"]),
        helper.make_node("Transpose", ["fg"], ["fg_t"], perm=[0, 2, 1]),
        helper.make_node("TopK", ["fg_t", "c_k"], ["cand_scores", "cand_priors"], axis=2),
        # Their boxes: [B, (C-1)*K, 4] -> one NMS batch entry per (image, class).
        helper.make_node("Shape", ["boxes"], ["boxes_shape"]),
        helper.make_node("Slice", ["boxes_shape", "c_zero_vec", "c_one"], ["batch"]),
        helper.make_node("Concat", ["batch", "c_minus_one_vec", "c_one"], ["gather_shape"], axis=0),
        helper.make_node("Reshape", ["cand_priors", "gather_shape"], ["cand_priors_col"]),
        helper.make_node("GatherND", ["boxes", "cand_priors_col"], ["cand_boxes"], batch_dims=1),
        helper.make_node("Reshape", ["cand_boxes", "c_nms_shape"], ["nms_boxes"]),
        # NMS sees ranks, not scores: K, K-1, ..., 1 in TopK's order (score, then lower
        # prior), 0 below the score threshold. ONNX Runtime's NMS breaks ties in score in
        # no set order; with ranks there are none, and the greedy order is PyTorch's.
        helper.make_node("Greater", ["cand_scores", "c_score"], ["cand_valid"]),
        helper.make_node("Where", ["cand_valid", "c_ranks", "c_zero_f"], ["cand_ranks"]),
        helper.make_node("Reshape", ["cand_ranks", "c_nms_scores_shape"], ["nms_scores"]),
        helper.make_node(
            "NonMaxSuppression",
            ["nms_boxes", "nms_scores", "c_max_out", "c_iou", "c_half"],
            ["selected"],
        ),
        # selected [N, 3] = (image * (C-1) + class, 0, k): back to image, class, prior.
        helper.make_node("Gather", ["selected", "c_zero_i"], ["entry"], axis=1),
        helper.make_node("Div", ["entry", "c_fg"], ["image"]),
        helper.make_node("Mod", ["entry", "c_fg"], ["class"]),
        helper.make_node("Gather", ["selected", "c_two_scalar"], ["slot"], axis=1),
        helper.make_node("Unsqueeze", ["entry", "c_minus_one_vec"], ["entry_col"]),
        helper.make_node("Unsqueeze", ["slot", "c_minus_one_vec"], ["slot_col"]),
        helper.make_node("Concat", ["entry_col", "slot_col"], ["entry_slot"], axis=1),
        helper.make_node("Reshape", ["cand_priors", "c_flat_shape"], ["flat_priors"]),
        helper.make_node("Reshape", ["cand_scores", "c_flat_shape"], ["flat_scores"]),
        helper.make_node("GatherND", ["flat_priors", "entry_slot"], ["prior"]),
        helper.make_node("GatherND", ["flat_scores", "entry_slot"], ["survivor_score"]),
        # Survivors scattered to [B, P*(C-1)] at prior * (C-1) + class (the rest -1):
        # TopK then ranks by score, ties to the lower prior, then the lower class.
        helper.make_node("Mul", ["prior", "c_fg"], ["prior_base"]),
        helper.make_node("Add", ["prior_base", "class"], ["position"]),
        helper.make_node("Unsqueeze", ["image", "c_minus_one_vec"], ["image_col"]),
        helper.make_node("Unsqueeze", ["position", "c_minus_one_vec"], ["position_col"]),
        helper.make_node("Concat", ["image_col", "position_col"], ["dense_index"], axis=1),
        helper.make_node("Concat", ["batch", "c_dense_width"], ["dense_shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["dense_shape"],
            ["empty"],
            value=helper.make_tensor("minus_one", TensorProto.FLOAT, [1], [-1.0]),
        ),
        helper.make_node("ScatterND", ["empty", "dense_index", "survivor_score"], ["dense"]),
        helper.make_node("TopK", ["dense", "c_keep"], ["best_scores", "best_position"], axis=1),
        helper.make_node("Greater", ["best_scores", "c_no_score"], ["valid"]),
        helper.make_node("Cast", ["valid"], ["valid_int"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["valid_int", "c_one"], ["count"], keepdims=0),
        helper.make_node("Div", ["best_position", "c_fg"], ["best_prior"]),
        helper.make_node("Mod", ["best_position", "c_fg"], ["best_class"]),
        helper.make_node("Add", ["best_class", "c_label_offset"], ["best_label"]),
        helper.make_node("Unsqueeze", ["best_prior", "c_minus_one_vec"], ["best_prior_col"]),
        helper.make_node("GatherND", ["boxes", "best_prior_col"], ["best_boxes"], batch_dims=1),
        helper.make_node("Mul", ["best_boxes", "c_scale"], ["best_pixels"]),
        helper.make_node("Unsqueeze", ["valid", "c_minus_one_vec"], ["valid_col"]),
        helper.make_node("Where", ["valid_col", "best_pixels", "c_zero_f"], ["detection_boxes"]),
        helper.make_node("Where", ["valid", "best_scores", "c_zero_f"], ["detection_scores"]),
        helper.make_node("Where", ["valid", "best_label", "c_zero_i"], ["detection_labels"]),
    ]
    graph = helper.make_graph(
        nodes,
        "postprocess",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", num_priors, 4]),
            helper.make_tensor_value_info(
                "scores", TensorProto.FLOAT, ["batch", num_priors, num_classes]
            ),
        ],
        [
            helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, ["batch", kept, 4]),
            helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, ["batch", kept]),
            helper.make_tensor_value_info("detection_labels", TensorProto.INT64, ["batch", kept]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _onnx_type(array: np.ndarray) -> int:
    from onnx import TensorProto

    return {np.dtype(np.int64): TensorProto.INT64, np.dtype(np.float32): TensorProto.FLOAT}[
        array.dtype
    ]


class _Uint8Input(nn.Module):
    """``uint8`` images in, the float pixels the detector takes."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.network(images.float())


END_TO_END_OUTPUTS = ("boxes", "scores", "labels", "count")


def export_end_to_end(
    model: SingleShotDetector,
    path: str | Path,
    *,
    image_size: int,
    variances: tuple[float, float],
    score_threshold: float,
    pre_nms_topk: int,
    nms_iou_threshold: float,
    max_detections: int,
) -> Path:
    """Write the whole detector (module docstring) as one ONNX file; returns the path."""
    import onnx
    from onnx import compose, helper

    path = Path(path)
    with tempfile.TemporaryDirectory() as folder:
        network_path = export_onnx(
            _Uint8Input(DecodedDetector(model, variances)),
            Path(folder) / "network.onnx",
            image_size,
            output_names=["decoded_boxes", "class_scores"],
            uint8_input=True,
        )
        network = onnx.load(str(network_path))
    opset = next(item.version for item in network.opset_import if item.domain in ("", "ai.onnx"))
    num_priors, num_classes = (
        int(model.priors_cxcywh.shape[0]),
        int(model.head.num_classes),
    )
    post = postprocess_graph(
        num_priors=num_priors,
        num_classes=num_classes,
        image_size=image_size,
        score_threshold=score_threshold,
        pre_nms_topk=pre_nms_topk,
        nms_iou_threshold=nms_iou_threshold,
        max_detections=max_detections,
        opset=opset,
    )
    post.ir_version = network.ir_version
    merged = compose.merge_models(
        network,
        post,
        io_map=[("decoded_boxes", "boxes"), ("class_scores", "scores")],
        prefix2="post/",
    )
    # The two graphs import the same opset; keep one entry per domain.
    imports = {item.domain or "": item.version for item in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(
        helper.make_opsetid(domain, version) for domain, version in imports.items()
    )
    renames = {f"post/detection_{name}": name for name in ("boxes", "scores", "labels")}
    renames["post/count"] = "count"
    for output in merged.graph.output:
        new_name = renames[output.name]
        for node in merged.graph.node:
            node.output[:] = [new_name if item == output.name else item for item in node.output]
        output.name = new_name
    onnx.checker.check_model(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(path))
    return path


def export_detector(model: SingleShotDetector, config: Config, path: str | Path) -> Path:
    """:func:`export_end_to_end` with the config's input size, variances and
    post-processing settings."""
    post = config.postprocess
    if post.nms != "hard":
        raise ConfigError(
            f"postprocess.nms={post.nms}: the ONNX graph has hard NMS only (ONNX's "
            "NonMaxSuppression); export with postprocess.nms=hard"
        )
    return export_end_to_end(
        model,
        path,
        image_size=config.model.image_size,
        variances=config.priors.variances,
        score_threshold=post.score_threshold,
        pre_nms_topk=post.pre_nms_topk,
        nms_iou_threshold=post.nms_iou_threshold,
        max_detections=post.max_detections,
    )


@dataclass
class DetectionComparison:
    """ONNX Runtime's detections against PyTorch's, per image matched by label, score
    (within ``score_tolerance``) and box (within ``box_tolerance`` pixels).

    ``tied``: detections found by one runtime only whose score has a twin among the
    image's candidates (another prior's score for the same class within the tolerance,
    or any class's when the per-image cap cut the list): two runtimes may order tied
    scores differently, so which twin survives top-k, NMS or the cap is not defined by
    the model. ``unexplained``: the others, real differences. ``score_error`` and
    ``box_error`` are the largest over matched pairs.
    """

    detections: int
    matched: int
    tied: int
    unexplained: int
    score_error: float
    box_error: float
    score_tolerance: float
    box_tolerance: float

    @property
    def agrees(self) -> bool:
        return self.unexplained == 0

    def describe(self) -> str:
        head = (
            f"{self.matched} of {self.detections} detections equal (score within "
            f"{self.score_tolerance:g}, box within {self.box_tolerance:g} px; largest "
            f"differences {self.score_error:.3g} and {self.box_error:.3g} px)"
        )
        if self.tied:
            head += (
                f"; {self.tied} differ only among tied scores (a twin within "
                f"{self.score_tolerance:g} in the same class: the runtimes may order ties "
                "differently; untrained weights give many)"
            )
        if self.unexplained:
            head += f"; {self.unexplained} DIFFER"
        return head


def compare_detections(
    expected: list[dict[str, Tensor]],
    got: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    candidate_scores: Tensor,
    *,
    image_size: int,
    max_detections: int,
    score_tolerance: float = 1e-5,
    box_tolerance: float = 0.5,
) -> DetectionComparison:
    """Compare PyTorch's post-processed detections (normalised boxes) with the
    end-to-end graph's outputs (``boxes`` in pixels, ``scores``, ``labels``, ``counts``);
    ``candidate_scores`` ``[B, P, C]``: PyTorch's class probabilities of every prior
    (background first), where ties are looked for."""
    boxes, scores, labels, counts = got
    total = matched = tied = unexplained = 0
    score_error = box_error = 0.0
    for index, detection in enumerate(expected):
        ours = (
            detection["boxes"].numpy() * image_size,
            detection["scores"].numpy(),
            detection["labels"].numpy(),
        )
        count = int(counts[index])
        theirs = (boxes[index, :count], scores[index, :count], labels[index, :count])
        used = np.zeros(count, dtype=bool)
        unmatched_ours = []
        for box, score, label in zip(*ours, strict=True):
            candidates = np.flatnonzero(
                ~used
                & (theirs[2] == label)
                & (np.abs(theirs[1] - score) <= score_tolerance)
                & (np.abs(theirs[0] - box).max(axis=1, initial=0) <= box_tolerance)
            )
            if candidates.size:
                best = candidates[np.argmin(np.abs(theirs[1][candidates] - score))]
                used[best] = True
                matched += 1
                score_error = max(score_error, float(abs(theirs[1][best] - score)))
                box_error = max(box_error, float(np.abs(theirs[0][best] - box).max()))
            else:
                unmatched_ours.append((score, label))
        unmatched_theirs = list(zip(theirs[1][~used], theirs[2][~used], strict=True))
        total += len(ours[1])
        probabilities = candidate_scores[index].double().numpy()  # [P, C]
        capped = len(ours[1]) >= max_detections or count >= max_detections
        for score, label in unmatched_ours + unmatched_theirs:
            near = np.abs(probabilities - float(score)) <= score_tolerance  # [P, C]
            # A twin is another candidate than the detection's own prior.
            if near[:, int(label)].sum() > 1 or (capped and near[:, 1:].sum() > 1):
                tied += 1
            else:
                unexplained += 1
    return DetectionComparison(
        detections=total,
        matched=matched,
        tied=tied,
        unexplained=unexplained,
        score_error=score_error,
        box_error=box_error,
        score_tolerance=score_tolerance,
        box_tolerance=box_tolerance,
    )
