"""Int8 inference on the CPU: ONNX Runtime's static quantization of the end-to-end graph.

The convolutions are quantized (weights per output channel, activations per tensor, in
QDQ form, ranges calibrated on real images); everything after the network - softmax,
box decoding, top-k, NMS - stays in float32, as do the few operations between the
convolutions that ONNX Runtime keeps in float. The choice of backend is measured in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from utils.config import Config

logger = logging.getLogger(__name__)

# What is quantized: the convolutions (nearly all of the FLOPs) and the ReLU and max-pool
# layers between them, so that int8 tensors flow from one convolution to the next
# (measured on FSSD300 with 2 AVX2 cores: 296 ms against 324 ms with Conv alone, and
# 309 ms when Concat and Resize are quantized too).
QUANTIZED_OPERATORS = ("Conv", "Relu", "MaxPool")


def calibration_batches(config: Config, count: int, *, batch_size: int = 8) -> list[np.ndarray]:
    """The first ``count`` images of the config's training sets, resized to the model's
    input, as ``uint8`` ``[B, 3, S, S]`` batches (unreadable images are skipped)."""
    from data.records import BadSampleError, read_image
    from data.sources import prepare_data, read_records, resolve_class_names
    from data.transforms import resize_batch

    if count < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {count}")
    prepare_data(config)
    records = read_records(config, "train", resolve_class_names(config))
    batches, pending, used = [], [], 0
    for record in records:
        if used == count:
            break
        try:
            pending.append(read_image(record.image_path))
        except BadSampleError as error:
            logger.warning("%s (not used for calibration)", error)
            continue
        used += 1
        if len(pending) == batch_size or used == count:
            # Resized a batch at a time: full-size photos are not all held at once.
            batches.append(resize_batch(pending, config.model.image_size, channels_first=True))
            pending = []
    if pending:
        batches.append(resize_batch(pending, config.model.image_size, channels_first=True))
    if used < count:
        logger.warning("calibrating on %d images: the training sets have no more", used)
    return batches


def int8_calibration(config: Config, count: int | None) -> Callable[[], list[np.ndarray]] | None:
    """A function giving the calibration batches of ``count`` images of the config's
    training set (``--int8 --calibration-images N``); None for ``count`` None (no int8)."""
    if count is None:
        return None
    return lambda: calibration_batches(config, count)


def quantize_end_to_end(
    float_path: str | Path,
    int8_path: str | Path,
    calibration_batches: Sequence[np.ndarray],
) -> Path:
    """Write the int8 version of an end-to-end ONNX detector.

    Args:
        float_path: the float32 graph (:func:`engine.export.export_end_to_end`).
        int8_path: where the quantized graph goes.
        calibration_batches: ``uint8`` ``[B, 3, S, S]`` image batches at the model's
            input size; the activation ranges are their min/max.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration_batches:
        raise ValueError("int8 calibration needs at least one image")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(calibration_batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(float_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPERATORS),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    logger.info(
        "quantized %s to int8 (%d calibration images)",
        int8_path,
        sum(len(batch) for batch in calibration_batches),
    )
    return int8_path
