"""Train an FSSD/SSD detector.

    python train.py --config configs/quickstart_shapes.yaml [section.key=value ...]
    torchrun --nproc_per_node 4 train.py --config configs/fssd300_voc.yaml
    python train.py --resume runs/quickstart/last.pt
    python train.py --config configs/quickstart_shapes.yaml --init pruned.pt   # fine-tune

Everything goes into ``train.output_dir``: the resolved ``config.yaml``, ``last.pt``
(every ``train.checkpoint_interval`` epochs and on SIGINT/SIGTERM), ``best.pt`` (best
validation mAP), ``metrics.jsonl``, ``tensorboard/``, ``results.json`` and a few
validation images with their detections in ``detections/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from data.loader import (
    build_dataset,
    build_eval_loader,
    build_train_loader,
    iterations_per_epoch,
)
from data.records import BadSampleError, read_image
from data.sources import prepare_data, resolve_class_names, val_annotation_file
from models.build import build_loss, build_model, build_postprocessor, count_flops
from models.pruning import prunable_norm_names
from models.weights import load_detector_weights
from utils.checkpoint import (
    capture_rng_state,
    channel_widths,
    load_checkpoint,
    read_project_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from utils.config import (
    Config,
    ConfigError,
    add_config_arguments,
    apply_override,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    save_config,
)
from utils.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    cleanup,
    init_distributed,
)
from utils.engine import (
    EpochResult,
    StopRequest,
    TrainState,
    bn_scales,
    evaluate_detections,
    predict,
    train_one_epoch,
)
from utils.errors import UserError
from utils.evaluation import coco_results, coco_truth_and_ids, score_coco
from utils.log import MetricsWriter, setup_logging
from utils.optim import build_optimizer, build_scheduler
from utils.visualize import draw_detections

logger = logging.getLogger("train")

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train an FSSD/SSD detector from a config (see configs/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run exactly where it stopped: from CHECKPOINT, or from "
        "train.output_dir/last.pt when no path is given; its saved config is used "
        "(overrides still apply, e.g. train.epochs=200 to extend it)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start from these weights with a fresh optimiser and schedule (fine-tuning); "
        "a pruned checkpoint brings its channel widths, so the model is rebuilt pruned",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        default=None,
        metavar="LAMBDA",
        help="L1 penalty on BatchNorm scales (network slimming stage 1); sets train.sparsity",
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="ITERATION",
        help="save last.pt and stop once this many iterations are done (resume later)",
    )
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any] | None]:
    """The run's config and, when resuming, the checkpoint to resume from."""
    checkpoint = None
    if args.init is not None and args.resume is not None:
        raise ConfigError("--init starts a new run and --resume continues one: give one")
    if args.resume is None:
        config = load_config(args.config, args.overrides)
    else:
        if args.resume == "auto":
            located = load_config(args.config, args.overrides)
            path = Path(located.train.output_dir) / "last.pt"
        else:
            if args.config is not None:
                raise ConfigError(
                    "--resume CHECKPOINT uses the checkpoint's config; drop --config "
                    "(trailing overrides still apply)"
                )
            path = Path(args.resume)
        checkpoint = load_checkpoint(path)
        config = config_from_dict(checkpoint["config"], source=str(path))
        for override in args.overrides:
            config = apply_override(config, override)
    if args.sparsity is not None:
        config = apply_override(config, f"train.sparsity={args.sparsity}")
    return config, checkpoint


def choose_device(preference: str, context_local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", context_local_rank)
    return torch.device("cpu")


def install_signal_handlers(stop: StopRequest) -> dict[int, Any]:
    """First SIGINT/SIGTERM: finish the iteration, save, exit. A second SIGINT kills.

    Returns the previous handlers, for :func:`restore_signal_handlers`."""

    def handler(signum: int, _frame: Any) -> None:
        stop.request(f"received {signal.Signals(signum).name}")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, handler)
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def draw_examples(
    *,
    dataset: Any,
    detections: list,
    class_names: list[str],
    output_dir: Path,
    count: int,
) -> None:
    folder = output_dir / "detections"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(min(count, len(dataset))):
        record, detection = dataset.records[index], detections[index]
        if detection is None:
            continue
        try:
            image = read_image(record.image_path)
        except BadSampleError as error:
            logger.warning("%s", error)
            continue
        drawn = draw_detections(
            image, detection["boxes"], detection["labels"], detection["scores"], class_names
        )
        cv2.imwrite(str(folder / f"{record.image_id}.jpg"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))


def main(args: argparse.Namespace) -> int:
    config, checkpoint = resolve_config(args)
    use_cuda = config.train.device != "cpu" and torch.cuda.is_available()
    context = init_distributed(use_cuda)
    setup_logging(context.is_main)
    try:
        training = TrainingRun(config, checkpoint, context, init=args.init)
        stop = StopRequest()
        previous_handlers = install_signal_handlers(stop)
        try:
            return training.train(stop, stop_at_iteration=args.stop_at)
        finally:
            restore_signal_handlers(previous_handlers)
            training.writer.close()
    finally:
        cleanup(context)


class TrainingRun:
    """Everything one training run holds: data, model, optimiser, state, outputs."""

    def __init__(
        self,
        config: Config,
        checkpoint: dict[str, Any] | None,
        context: DistributedContext,
        *,
        init: Path | None = None,
    ) -> None:
        """``checkpoint`` resumes a run; ``init`` names weights to start from instead."""
        self.start_time = time.perf_counter()
        self.config = config
        self.context = context
        self.device = choose_device(config.train.device, context.local_rank)
        self.output_dir = Path(config.train.output_dir)
        self.autocast_dtype = AMP_DTYPES[config.train.amp]
        if self.autocast_dtype is not None and self.device.type != "cuda":
            logger.warning("train.amp=%s needs CUDA; training in float32", config.train.amp)
            self.autocast_dtype = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if context.is_main:
            print(config_to_yaml(config), end="", flush=True)
            save_config(config, self.output_dir / "config.yaml")
        torch.manual_seed(config.train.seed)

        if context.is_main:
            prepare_data(config)
        barrier(context)
        self.class_names = resolve_class_names(config)
        self.train_set = build_dataset(config, "train", self.class_names)
        self.val_set = (
            build_dataset(config, "val", self.class_names) if config.data.val_sets else None
        )
        self.train_loader, self.sampler = build_train_loader(
            self.train_set, config, num_replicas=context.world_size, rank=context.rank
        )
        self.val_loader = build_eval_loader(self.val_set, config) if self.val_set else None
        self.per_epoch = iterations_per_epoch(
            len(self.train_set), config.train.batch_size, context.world_size
        )
        logger.info(
            "%d training images, %d validation images, %d iterations per epoch, %d epochs",
            len(self.train_set),
            len(self.val_set) if self.val_set is not None else 0,
            self.per_epoch,
            config.train.epochs,
        )

        self.channel_widths = channel_widths(
            checkpoint if init is None else read_project_checkpoint(init)
        )
        self.model = build_model(
            config,
            load_weights=checkpoint is None and init is None,
            channel_widths=self.channel_widths,
        )
        if init is not None:
            load_detector_weights(self.model, init)
            logger.info(
                "initialised from %s%s", init, " (pruned widths)" if self.channel_widths else ""
            )
        self.forward_gflops = count_flops(self.model, config.model.image_size) / 1e9
        self.model = self.model.to(self.device)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        sparse_norm_names = prunable_norm_names(self.model) if config.train.sparsity > 0 else []
        if config.train.sparsity > 0 and not sparse_norm_names:
            raise ConfigError(
                "train.sparsity needs BatchNorm layers to make sparse; this model has "
                "none that can be pruned (set model.batch_norm=true)"
            )
        if context.is_distributed and config.train.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # Looked up after the SyncBatchNorm conversion, which replaces the modules.
        modules = dict(self.model.named_modules())
        self.sparse_norms = [modules[name] for name in sparse_norm_names]
        self.loss_fn = build_loss(config, self.model.priors_cxcywh).to(self.device)
        self.postprocessor = build_postprocessor(config, self.model.priors_cxcywh).to(self.device)
        self.optimizer = build_optimizer(self.model, config.solver)
        self.scheduler = build_scheduler(
            self.optimizer,
            config.solver,
            epochs=config.train.epochs,
            iterations_per_epoch=self.per_epoch,
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16
        )
        self.state = TrainState()
        if checkpoint is not None:
            self.restore(checkpoint)
        self.train_model: nn.Module = self.model
        if context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.writer = MetricsWriter(self.output_dir, enabled=context.is_main)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        # The schedule's shape comes from the current config (train.epochs may have been
        # extended); only the position (last_epoch, base LRs) comes from the checkpoint.
        scheduler_state = dict(checkpoint["scheduler"])
        scheduler_state["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
        self.scheduler.load_state_dict(scheduler_state)
        self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        self.state = TrainState(
            iteration=checkpoint["iteration"],
            best_metric=checkpoint["best_metric"],
            best_iteration=checkpoint["best_iteration"],
        )
        logger.info(
            "resumed at iteration %d (epoch %d)",
            self.state.iteration,
            self.state.iteration // self.per_epoch + 1,
        )

    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` (rank 0, atomically) and wait for every rank."""
        path = self.output_dir / name
        if self.context.is_main:
            state = {
                "config": config_to_dict(self.config),
                "class_names": self.class_names,
                "channel_widths": self.channel_widths,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": self.state.iteration,
                "best_metric": self.state.best_metric,
                "best_iteration": self.state.best_iteration,
                "rng": capture_rng_state(),
            }
            save_checkpoint(state, path)
        barrier(self.context)
        return path

    def log_throughput(self, epoch: int, result: EpochResult) -> None:
        """Training images/s of the epoch (this rank, data loading included) and the
        GFLOP/s that means: a training step costs about 3x the forward's FLOPs."""
        if result.seconds <= 0 or not self.context.is_main:
            return
        images_per_second = result.images / result.seconds
        gflops_per_second = 3 * self.forward_gflops * images_per_second
        logger.info(
            "epoch %d: %.1f training images/s, about %.1f GFLOP/s (3 x %.3f forward GFLOPs "
            "per image)",
            epoch + 1,
            images_per_second,
            gflops_per_second,
            self.forward_gflops,
        )
        self.writer.write(
            "throughput",
            self.state.iteration,
            epoch,
            {"images_per_second": images_per_second, "gflops_per_second": gflops_per_second},
        )

    def evaluate(self, epoch: int) -> dict[str, Any] | None:
        """Validation mAP, computed on rank 0; every rank gets the score (``mAP``), rank 0
        also the detections and per-class APs. None without a validation set."""
        if self.val_loader is None:
            return None
        result: dict[str, Any] = {"mAP": math.nan}
        if self.context.is_main:
            detections, timing = predict(
                self.model,
                self.postprocessor,
                self.val_loader,
                self.device,
                autocast_dtype=self.autocast_dtype,
            )
            result = self.score(detections)
            result["detections"] = detections
            self.writer.write(
                "eval",
                self.state.iteration,
                epoch,
                {"mAP": result["mAP"], **timing.ms_per_image()},
            )
            logger.info("epoch %d: %s mAP %.4f", epoch + 1, result["metric"], result["mAP"])
        result["mAP"] = broadcast_from_main(result["mAP"], self.context, self.device)
        return result

    def score(self, detections: list) -> dict[str, Any]:
        """mAP of validation detections with ``eval.metric`` (VOC07, VOC2010+ or COCO)."""
        records = self.val_set.records
        if self.config.eval.metric == "coco":
            coco, image_ids, category_ids = coco_truth_and_ids(
                records, self.class_names, val_annotation_file(self.config)
            )
            entries = coco_results(detections, image_ids, category_ids)
            return score_coco(coco, entries, self.class_names)
        return evaluate_detections(
            records,
            detections,
            self.class_names,
            metric=self.config.eval.metric,
            iou_threshold=self.config.eval.iou_threshold,
        )

    def train(self, stop: StopRequest, stop_at_iteration: int | None = None) -> int:
        """The epoch loop: train, checkpoint, evaluate; then the final evaluation, example
        images and ``results.json``. Returns the exit code."""
        config, state = self.config, self.state
        total_iterations = self.per_epoch * config.train.epochs
        final: dict[str, Any] | None = None
        last_eval_iteration = -1
        try:
            while state.iteration < total_iterations:
                epoch = state.iteration // self.per_epoch
                self.sampler.set_epoch(epoch)
                position = state.iteration % self.per_epoch
                self.sampler.start_at(position * self.train_loader.batch_size)
                result = train_one_epoch(
                    model=self.train_model,
                    loss_fn=self.loss_fn,
                    loader=self.train_loader,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    scaler=self.scaler,
                    device=self.device,
                    epoch=epoch,
                    state=state,
                    context=self.context,
                    writer=self.writer,
                    stop=stop,
                    autocast_dtype=self.autocast_dtype,
                    channels_last=config.train.channels_last,
                    grad_clip_norm=config.solver.grad_clip_norm,
                    sparsity=config.train.sparsity,
                    sparse_norms=self.sparse_norms,
                    mixup_prob=config.train.mixup_prob,
                    mixup_alpha=config.train.mixup_alpha,
                    seed=config.train.seed,
                    log_interval=config.train.log_interval,
                    stop_at_iteration=stop_at_iteration,
                )
                if result.stop_reason == "nonfinite":
                    last = self.output_dir / "last.pt"
                    kept = (
                        f"the last good checkpoint is {last}"
                        if last.is_file()
                        else "no checkpoint was written yet"
                    )
                    logger.error("%s; %s", result.message, kept)
                    return 1
                if result.stop_reason is not None:
                    path = self.save("last.pt")
                    logger.info(
                        "%s: saved %s at iteration %d; continue with --resume",
                        result.message,
                        path,
                        state.iteration,
                    )
                    return 0
                epochs_done = epoch + 1
                self.log_throughput(epoch, result)
                if config.train.sparsity > 0:
                    self.writer.histogram(
                        "bn_scales", bn_scales(self.sparse_norms), state.iteration
                    )
                if (
                    epochs_done % config.train.checkpoint_interval == 0
                    or epochs_done == config.train.epochs
                ):
                    self.save("last.pt")
                interval = config.train.eval_interval
                if (
                    interval > 0 and epochs_done % interval == 0
                ) or epochs_done == config.train.epochs:
                    final = self.evaluate(epoch)
                    last_eval_iteration = state.iteration
                    if final is not None and final["mAP"] > state.best_metric:
                        state.best_metric, state.best_iteration = final["mAP"], state.iteration
                        self.save("best.pt")
                        self.save("last.pt")
        except BadSampleError as error:
            # Re-raised from a loader worker: keep the message, not the worker traceback.
            message = str(error).strip().splitlines()[-1]
            if self.context.is_distributed:
                # Only this rank hit the sample: a collective save would wait forever.
                # Exiting non-zero makes torchrun stop the other ranks.
                logger.error("bad sample (data.on_bad_sample=stop): %s", message)
                return 2
            path = self.save("last.pt")
            logger.error("bad sample (data.on_bad_sample=stop): %s; saved %s", message, path)
            return 2

        if last_eval_iteration != state.iteration:
            final = self.evaluate(max(state.iteration // self.per_epoch - 1, 0))
        if self.context.is_main and final is not None:
            self.finish(final)
        barrier(self.context)
        return 0

    def finish(self, final: dict[str, Any]) -> None:
        """Example images with detections and ``results.json``."""
        draw_examples(
            dataset=self.val_set,
            detections=final["detections"],
            class_names=self.class_names,
            output_dir=self.output_dir,
            count=self.config.train.visualize_images,
        )
        summary = {
            "metric": final["metric"],
            "mAP": final["mAP"],
            "ap_per_class": final["ap_per_class"],
            "best_mAP": self.state.best_metric,
            "best_iteration": self.state.best_iteration,
            "iterations": self.state.iteration,
            "train_seconds": time.perf_counter() - self.start_time,
        }
        (self.output_dir / "results.json").write_text(
            json.dumps(summary, indent=2), encoding="utf-8"
        )
        print(
            f"{final['metric']} mAP {final['mAP']:.4f} (best {self.state.best_metric:.4f}) after "
            f"{self.state.iteration} iterations in {summary['train_seconds']:.0f} s; "
            f"outputs in {self.output_dir}"
        )


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
