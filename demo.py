"""Run a detector on images, a folder, a glob, a video file or a webcam.

    python demo.py --checkpoint runs/quickstart_shapes/best.pt datasets/shapes/JPEGImages
    python demo.py --checkpoint runs/quickstart_shapes/best.pt "photos/*.jpg" --threshold 0.5
    python demo.py --checkpoint runs/fssd300_voc/best.pt clip.mp4      # writes clip.mp4 annotated
    python demo.py --checkpoint runs/fssd300_voc/best.pt 0 --show      # webcam 0 in a window

Annotated images (and videos, same size and frame rate) go to ``--output`` (default
``train.output_dir/demo``); ``--show`` displays them instead. Unreadable files and frames
are reported and skipped.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.records import IMAGE_EXTENSIONS, BadSampleError, read_image
from engine.inference import SpeedOptions, build_pipeline
from engine.loading import load_model
from engine.quantize import int8_calibration
from utils.cli import (
    add_backend_arguments,
    add_checkpoint_argument,
    add_config_arguments,
    add_device_argument,
    add_out_argument,
    add_speed_arguments,
    positive_int,
    probability,
    run_command,
    script_parser,
    speed_flags,
)
from utils.device import choose_device
from utils.log import setup_logging
from utils.visualize import draw_detections

logger = logging.getLogger("demo")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Draw a detector's detections on images, videos or a webcam stream.", __doc__
    )
    parser.add_argument(
        "input",
        help="an image, a folder, a glob pattern (quoted), a video file or a webcam index",
    )
    add_config_arguments(parser)
    add_checkpoint_argument(parser, required=True)
    add_out_argument(parser, help="output folder", aliases=("--output",))
    parser.add_argument("--show", action="store_true", help="show results in a window")
    parser.add_argument(
        "--threshold",
        type=probability,
        default=0.3,
        help="lowest score drawn, in [0, 1] (default 0.3)",
    )
    parser.add_argument(
        "--topk",
        type=positive_int,
        default=None,
        help="most detections kept per image, at least 1 (default: the config's "
        "postprocess.max_detections, 200 unless set)",
    )
    add_speed_arguments(parser, auto_layout=True)
    add_device_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument(
        "--class-names",
        nargs="*",
        default=None,
        help="names of labels 1..C-1 (default: the checkpoint's)",
    )
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


class Detector:
    """Model, post-processing and resizing for single images (RGB uint8)."""

    def __init__(self, args: argparse.Namespace) -> None:
        overrides = list(args.overrides)
        if args.topk is not None:
            overrides.append(f"postprocess.max_detections={args.topk}")
        config, model, checkpoint = load_model(args.config, overrides, args.checkpoint)
        self.class_names = args.class_names or (checkpoint or {}).get("class_names") or []
        if not self.class_names:
            self.class_names = [str(label) for label in range(1, config.model.num_classes)]
        self.pipeline = build_pipeline(
            model,
            config,
            backend=args.backend,
            device=choose_device(args.device, origin="--device"),
            options=SpeedOptions(**speed_flags(args), inference_mode=True),
            onnx_path=args.onnx,
            calibration=int8_calibration(config, args.calibration_images if args.int8 else None),
        )
        self.threshold = args.threshold
        self.output_dir = Path(config.train.output_dir) / "demo"
        # The first call pays for kernel selection and allocation: keep it out of the FPS.
        size = config.model.image_size
        self(np.zeros((size, size, 3), dtype=np.uint8))

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The image with its detections drawn, and the detections (pixels)."""
        [result] = self.pipeline([image])
        return self.draw(image, result), result

    def stream(
        self, images: Iterable[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`__call__` for each image, the next one read and preprocessed while the
        current one runs (the pipeline's throughput mode)."""
        for [image], [result] in self.pipeline.stream([image] for image in images):
            yield self.draw(image, result), result

    def draw(self, image: np.ndarray, result: dict[str, np.ndarray]) -> np.ndarray:
        return draw_detections(
            image,
            result["boxes"],
            result["labels"],
            result["scores"],
            self.class_names,
            score_threshold=self.threshold,
        )


def image_paths(source: str) -> list[Path]:
    """The images an input names: a file, a folder's images, or a glob's matches."""
    path = Path(source)
    if path.is_dir():
        return sorted(item for item in path.iterdir() if item.suffix.lower() in IMAGE_EXTENSIONS)
    if path.is_file():
        return [path]
    return sorted(
        Path(item) for item in glob.glob(source) if Path(item).suffix.lower() in IMAGE_EXTENSIONS
    )


def is_video(source: str) -> bool:
    return source.isdigit() or Path(source).suffix.lower() in VIDEO_EXTENSIONS


def frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def show(window: str, image: np.ndarray) -> bool:
    """Display an RGB image; False when the user pressed q or Esc."""
    cv2.imshow(window, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)


def run_images(detector: Detector, paths: list[Path], output: Path, display: bool) -> float:
    """Annotate each image; returns the average FPS over the images processed.

    Raises:
        BadSampleError: no image could be read (the file and the problem named).
    """
    total_seconds, processed = 0.0, 0
    failures: list[BadSampleError] = []
    for path in tqdm(paths, desc="images", dynamic_ncols=True):
        try:
            image = read_image(path)
        except BadSampleError as error:
            logger.warning("%s (skipped)", error)
            failures.append(error)
            continue
        start = time.perf_counter()
        drawn, result = detector(image)
        seconds = time.perf_counter() - start
        total_seconds, processed = total_seconds + seconds, processed + 1
        kept = int((result["scores"] >= detector.threshold).sum())
        tqdm.write(f"{path.name}: {kept} detections, {1 / seconds:.1f} FPS")
        if display:
            if not show("demo", drawn):
                break
        else:
            cv2.imwrite(str(output / f"{path.stem}.jpg"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    if failures and not processed:
        if len(paths) == 1:
            raise failures[0]
        raise BadSampleError(f"none of the {len(paths)} images could be read; {failures[0]}")
    return processed / total_seconds if total_seconds else float("nan")


def run_video(detector: Detector, source: str, output: Path, display: bool) -> float:
    """Annotate each frame of a video or webcam; returns the average FPS."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise FileNotFoundError(f"{source}: cannot open the video or webcam")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    if not display:
        name = f"webcam{source}.mp4" if source.isdigit() else f"{Path(source).stem}.mp4"
        writer = cv2.VideoWriter(
            str(output / name), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
        )
    total_seconds, processed = 0.0, 0
    # Frames stream through the throughput mode: the next one is read and preprocessed
    # while this one runs, so the FPS is frames per second of wall clock, reading,
    # drawing and writing included.
    progress = tqdm(
        detector.stream(frames(capture)), total=total, desc="frames", dynamic_ncols=True
    )
    try:
        last = time.perf_counter()
        for drawn, _ in progress:
            now = time.perf_counter()
            seconds, last = now - last, now
            total_seconds, processed = total_seconds + seconds, processed + 1
            progress.set_postfix(fps=f"{1 / seconds:.1f}", refresh=False)
            if writer is not None:
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            elif not show("demo", drawn):
                break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return processed / total_seconds if total_seconds else float("nan")


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    detector = Detector(args)
    output = args.out
    if output is None and not args.show:
        output = detector.output_dir
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    if is_video(args.input):
        average = run_video(detector, args.input, output, args.show)
    else:
        paths = image_paths(args.input)
        if not paths:
            raise FileNotFoundError(
                f"{args.input}: no image, folder of images, glob match or video"
            )
        average = run_images(detector, paths, output, args.show)
    print(
        f"average {average:.1f} FPS on {detector.pipeline.device}"
        + (f"; results in {output}" if output else "")
    )
    return 0


if __name__ == "__main__":
    try:
        run_command(main, parse_args, user_errors=(FileNotFoundError,))
    except cv2.error as error:
        sys.exit(f"error: OpenCV could not open a window or a file ({error.err})")
