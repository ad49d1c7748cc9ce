"""A training run: data, model, optimiser and state built from a config; the epoch loop
with checkpoints, evaluation and the final outputs. train.py parses the command line
and runs one."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from data.dataset import DetectionDataset
from data.loader import build_dataset, build_eval_loader, build_train_loader, iterations_per_epoch
from data.records import BadSampleError, read_image
from data.sources import prepare_data, resolve_class_names
from engine.budget import FIRST_FIT_ITERATIONS, LoopTiming, TimeBudget, evaluation_points
from engine.evaluation import Evaluator, finite_json
from engine.inference import SpeedOptions, build_pipeline, predict_on_ranks
from engine.loading import build_detector
from engine.training import (
    EpochOptions,
    EpochResult,
    StopRequest,
    TrainingParts,
    TrainState,
    bn_scales,
    loader_advice,
    train_one_epoch,
)
from models.build import build_loss
from models.counting import count_flops
from models.pruning import prunable_norm_names, resolve_channel_widths
from utils.checkpoint import (
    capture_rng_state,
    channel_widths,
    make_checkpoint,
    pruning_rounds,
    read_project_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from utils.config import Config, ConfigError, config_to_yaml, save_config
from utils.device import resolve_channels_last, resolve_precision
from utils.distributed import (
    DistributedContext,
    barrier,
    broadcast_buffers,
    broadcast_from_main,
)
from utils.errors import user_message
from utils.files import atomic_write_text, remove_stale_temporaries
from utils.log import MetricsWriter
from utils.optim import build_optimizer, build_scheduler
from utils.visualize import draw_detections

logger = logging.getLogger(__name__)


class TrainingRun:
    """Everything one training run holds: data, model, optimiser, state, outputs.

    Args:
        config: the run's config.
        checkpoint: a training checkpoint's contents, to resume from.
        context: the process's place in a distributed run.
        device: where this process trains (train.py chooses it from ``train.device``
            and the process's local rank).
        init: weights to start from instead (fine-tuning; a pruned checkpoint brings
            its channel widths).
    """

    def __init__(
        self,
        config: Config,
        checkpoint: dict[str, Any] | None,
        context: DistributedContext,
        device: torch.device,
        *,
        init: Path | None = None,
        allow_new_classes: bool = False,
    ) -> None:
        if config.train.sync_bn and context.is_distributed and device.type != "cuda":
            raise ConfigError(
                f"train.sync_bn: torch's SyncBatchNorm runs on GPUs only and this run trains "
                f"on {device.type}; set train.sync_bn=false (each process then keeps its own "
                "BatchNorm statistics, rank 0's are saved)"
            )
        self.start_time = time.perf_counter()
        self.data_wait_checked = False
        self.last_save = self.start_time
        self.config = config
        self.context = context
        self.device = device
        self.output_dir = Path(config.train.output_dir)
        self.precision = resolve_precision(config.train.amp, self.device, origin="train.amp")
        self.autocast_dtype = self.precision.dtype
        self.channels_last, layout_reason = resolve_channels_last(
            config.train.channels_last, self.device
        )
        if context.is_main:
            logger.info(
                "precision: %s on %s (%s); layout %s (%s)",
                "float32" if self.autocast_dtype is None else self.precision.name,
                self.device,
                self.precision.reason,
                "NHWC" if self.channels_last else "NCHW",
                layout_reason,
            )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if context.is_main:
            print(config_to_yaml(config), end="", flush=True)
            save_config(config, self.output_dir / "config.yaml")
            for stale in remove_stale_temporaries(self.output_dir):
                logger.info("removed %s, left by an interrupted checkpoint write", stale)
        torch.manual_seed(config.train.seed)
        self._build_data()
        self._build_model(
            checkpoint if init is None else read_project_checkpoint(init), init, allow_new_classes
        )
        self._build_optimisation()
        self.state = TrainState()
        if checkpoint is not None:
            self.restore(checkpoint)
        self.train_model: nn.Module = self.model
        if context.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # No buffer broadcast before every forward (each rank's BatchNorm statistics
            # follow its own batches; rank 0's are saved, train.sync_bn shares them), and
            # gradients bucketed in place (no copy per step).
            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=device_ids,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
            )
        # A resumed run continues the metrics from its checkpoint's iteration: what was
        # logged after it (before a crash) is dropped, so that no iteration appears twice.
        self.writer = MetricsWriter(
            self.output_dir,
            enabled=context.is_main,
            resume_iteration=self.state.iteration if checkpoint is not None else None,
        )

    def _build_data(self) -> None:
        config, context = self.config, self.context
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
        # Every rank evaluates its share of the validation batches; rank 0 scores.
        self.val_loader = (
            build_eval_loader(
                self.val_set, config, rank=self.context.rank, world_size=self.context.world_size
            )
            if self.val_set
            else None
        )
        self.evaluator = (
            Evaluator.from_config(config, self.val_set.records, self.class_names)
            if self.val_set is not None and context.is_main
            else None
        )
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

    def _build_model(
        self, source: dict[str, Any] | None, init: Path | None, allow_new_classes: bool
    ) -> None:
        """The model (pruned to ``source``'s widths, if any), on the device; its loss,
        post-processor and the BatchNorm layers the slimming penalty applies to. Weights
        from ``init`` of other classes are carried by class name."""
        config = self.config
        # Stored in every checkpoint, so that the model rebuilds without the widths file.
        self.channel_widths = resolve_channel_widths(
            channel_widths(source), config.model.widths_file
        )
        self.pruning_rounds = pruning_rounds(source)
        self.model = build_detector(
            config,
            checkpoint=source,
            weights=init,
            pretrained=source is None,
            class_names=self.class_names if init is not None else None,
            allow_new_classes=allow_new_classes,
        )
        if init is not None:
            logger.info(
                "initialised from %s%s", init, " (pruned widths)" if self.channel_widths else ""
            )
        self.forward_gflops = count_flops(self.model, config.model.image_size) / 1e9
        self.model = self.model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        sparse_norm_names = prunable_norm_names(self.model) if config.train.sparsity > 0 else []
        if config.train.sparsity > 0 and not sparse_norm_names:
            raise ConfigError(
                "train.sparsity needs BatchNorm layers to make sparse; this model has "
                "none that can be pruned (set model.batch_norm=true)"
            )
        if self.context.is_distributed and config.train.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # Looked up after the SyncBatchNorm conversion, which replaces the modules.
        modules = dict(self.model.named_modules())
        self.sparse_norms = tuple(modules[name] for name in sparse_norm_names)
        self.loss_fn = build_loss(config, self.model.priors_cxcywh).to(self.device)

    def _build_optimisation(self) -> None:
        config = self.config
        self.optimizer = build_optimizer(self.model, config.solver)
        self.scheduler = build_scheduler(
            self.optimizer,
            config.solver,
            epochs=config.train.epochs,
            iterations_per_epoch=self.per_epoch,
        )
        self.schedule = self.scheduler.lr_lambdas[0]
        self.total_iterations = self.per_epoch * config.train.epochs
        # Under a time budget, train.epochs only shapes the schedule: the length is
        # fitted to the clock as the run goes (engine/budget.py).
        self.budget = (
            TimeBudget(
                seconds=config.train.max_minutes * 60,
                num_evaluations=(
                    max(config.train.epochs // config.train.eval_interval, 1)
                    if config.train.eval_interval > 0
                    else 1
                ),
            )
            if config.train.max_minutes > 0
            else None
        )
        self.budget_fitted = False
        if self.budget is not None:
            # Long enough to reach the first fit, which sets the real length.
            self.total_iterations = max(self.total_iterations, FIRST_FIT_ITERATIONS + 1)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16
        )

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
            # Checkpoints from before time budgets lack it.
            elapsed_seconds=checkpoint.get("elapsed_seconds", 0.0),
        )
        if self.budget is not None and "total_iterations" in checkpoint:
            # The length fitted before the interruption, until this process has timed
            # iterations of its own.
            self.total_iterations = checkpoint["total_iterations"]
            self.schedule.fit_to(self.total_iterations)
            self.budget_fitted = True
        logger.info(
            "resumed at iteration %d (epoch %d)",
            self.state.iteration,
            self.state.iteration // self.per_epoch + 1,
        )

    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` (rank 0, atomically) and wait for every rank."""
        path = self.output_dir / name
        if self.context.is_main:
            state = make_checkpoint(
                config=self.config,
                model_state=self.model.state_dict(),
                class_names=self.class_names,
                channel_widths=self.channel_widths,
                pruning_rounds=self.pruning_rounds,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                iteration=self.state.iteration,
                best_metric=self.state.best_metric,
                best_iteration=self.state.best_iteration,
                elapsed_seconds=self.elapsed(),
                total_iterations=self.total_iterations,
                rng=capture_rng_state(),
            )
            save_checkpoint(state, path)
        barrier(self.context)
        self.last_save = time.perf_counter()
        return path

    def epoch_options(self, stop_at_iteration: int | None) -> EpochOptions:
        train = self.config.train
        return EpochOptions(
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
            grad_clip_norm=self.config.solver.grad_clip_norm,
            sparsity=train.sparsity,
            sparse_norms=self.sparse_norms,
            mixup_prob=train.mixup_prob,
            mixup_alpha=train.mixup_alpha,
            seed=train.seed,
            log_interval=train.log_interval,
            stop_at_iteration=stop_at_iteration,
        )

    def log_throughput(self, epoch: int, result: EpochResult) -> None:
        """Training images/s of the epoch (this rank, data loading included) and the
        GFLOP/s that means: a training step costs about 3x the forward's FLOPs. After the
        first epoch of the run, a warning when the step waited for data too long
        (:func:`engine.training.loader_advice`)."""
        if result.seconds <= 0 or not self.context.is_main:
            return
        if not self.data_wait_checked:
            self.data_wait_checked = True
            advice = loader_advice(result, self.train_loader.num_workers)
            if advice:
                logger.warning("epoch %d: %s", epoch + 1, advice)
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
            {
                "images_per_second": images_per_second,
                "gflops_per_second": gflops_per_second,
                "data_wait_share": result.data_seconds / result.seconds,
            },
        )

    def evaluate(self, epoch: int) -> dict[str, Any] | None:
        """Validation mAP (``eval.metric``): every rank runs its share of the validation
        batches with rank 0's BatchNorm statistics (the model rank 0 saves), rank 0
        gathers the detections and scores them; every rank gets the score (``mAP``),
        rank 0 also the detections and per-class APs. None without a validation set."""
        if self.val_loader is None:
            return None
        broadcast_buffers(self.model, self.context)
        # In float32 whatever train.amp is, as test.py runs by default: the score that
        # chooses best.pt is the one test.py reports for it.
        pipeline = build_pipeline(
            self.model,
            self.config,
            backend="torch",
            device=self.device,
            options=SpeedOptions(channels_last=self.channels_last, inference_mode=True),
        )
        detections, timing = predict_on_ranks(pipeline, self.val_loader, self.context)
        result: dict[str, Any] = {"mAP": math.nan}
        if self.evaluator is not None:
            result = self.evaluator.score(detections)
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

    def elapsed(self) -> float:
        """Seconds this run has taken: before a resume (from the checkpoint) and since."""
        return self.state.elapsed_seconds + time.perf_counter() - self.start_time

    def evaluation_points(self, total_iterations: int) -> list[int]:
        """The iterations after which the run evaluates: every ``train.eval_interval``
        epochs and at the end; under a time budget, as many, evenly spread over the
        fitted length (evaluations keep their share of the run)."""
        train = self.config.train
        interval = train.eval_interval
        if self.budget is not None:
            # None before the first fit: the length is not known yet.
            if not self.budget_fitted:
                return []
            return evaluation_points(total_iterations, self.budget.num_evaluations)
        if interval == 0:
            return [total_iterations]
        step = interval * self.per_epoch
        return [*range(step, total_iterations, step), total_iterations]

    def fit_to_budget(self, timing: LoopTiming, last_evaluation: int) -> int:
        """Total iterations that fit in ``train.max_minutes``; the LR schedule follows."""
        assert self.budget is not None
        iteration = self.state.iteration
        if timing.iterations < FIRST_FIT_ITERATIONS:
            # Too few iterations timed yet (start-up dominates them): keep going. (The
            # same on every rank, so no rank waits in the broadcast below alone.)
            return self.total_iterations
        per_iteration = timing.train_seconds / max(timing.iterations, 1)
        if timing.evaluations:
            per_evaluation = timing.eval_seconds / timing.evaluations
        else:
            # Inference costs about a third of a training step per image.
            val_images = len(self.val_set) if self.val_set is not None else 0
            per_evaluation = per_iteration * val_images / self.config.train.batch_size / 2
        total = self.budget.fit(
            elapsed=self.elapsed(),
            iteration=iteration,
            seconds_per_iteration=per_iteration,
            seconds_per_evaluation=per_evaluation,
            last_evaluation=last_evaluation,
        )
        # Every rank trains as long as rank 0's clock says.
        total = round(broadcast_from_main(total, self.context, self.device))
        self.schedule.fit_to(total)
        self.budget_fitted = True
        if total != self.total_iterations:
            logger.info(
                "train.max_minutes=%g: %d iterations (%.1f epochs) fit, at %.3f s per "
                "iteration and %.1f s per evaluation; %.0f s spent",
                self.config.train.max_minutes,
                total,
                total / self.per_epoch,
                per_iteration,
                per_evaluation,
                self.elapsed(),
            )
        return total

    def train(self, stop: StopRequest, stop_at_iteration: int | None = None) -> int:
        """The loop: train to the next stop (an epoch's end, an evaluation, a budget
        fit), checkpoint, evaluate; then the final evaluation, example images and
        ``results.json``. Returns the exit code."""
        config, state = self.config, self.state
        parts = TrainingParts(
            model=self.train_model,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            device=self.device,
        )
        options = self.epoch_options(None)
        timing = LoopTiming()
        final: dict[str, Any] | None = None
        last_eval_iteration = -1
        epoch_total = EpochResult()
        # Training time since the last fit, checkpoints included, evaluations not.
        since, since_iteration = time.perf_counter(), state.iteration
        try:
            while state.iteration < self.total_iterations:
                epoch = state.iteration // self.per_epoch
                self.sampler.set_epoch(epoch)
                position = state.iteration % self.per_epoch
                self.sampler.start_at(position * self.train_loader.batch_size)
                epoch_end = (epoch + 1) * self.per_epoch
                stops = [epoch_end, self.total_iterations]
                stops += self.evaluation_points(self.total_iterations)
                if stop_at_iteration is not None:
                    stops.append(stop_at_iteration)
                if self.budget is not None:
                    stops.append(
                        self.budget.next_fit(
                            state.iteration,
                            timed=timing.iterations,
                            total_iterations=self.total_iterations,
                            iterations_per_epoch=self.per_epoch,
                        )
                    )
                next_stop = min(point for point in stops if point > state.iteration)
                minutes = config.train.checkpoint_minutes
                due_in = self.last_save + 60 * minutes - time.perf_counter()
                result = train_one_epoch(
                    parts,
                    self.train_loader,
                    epoch=epoch,
                    state=state,
                    context=self.context,
                    writer=self.writer,
                    stop=stop,
                    options=dataclasses.replace(
                        options,
                        stop_at_iteration=next_stop,
                        checkpoint_due_in=due_in if minutes else None,
                    ),
                )
                epoch_total.images += result.images
                epoch_total.seconds += result.seconds
                epoch_total.data_seconds += result.data_seconds
                asked = stop_at_iteration is not None and state.iteration >= stop_at_iteration
                if result.stop_reason == "checkpoint":
                    self.save("last.pt")
                    logger.info(
                        "saved last.pt at iteration %d (%s)", state.iteration, result.message
                    )
                elif result.stop_reason not in (None, "stop_at"):
                    return self._stopped(result)
                if asked:
                    message = f"stopped at iteration {state.iteration} as asked"
                    return self._stopped(EpochResult(stop_reason="stop_at", message=message))
                epochs_done = state.iteration // self.per_epoch
                if state.iteration == epoch_end:
                    self.log_throughput(epoch, epoch_total)
                    epoch_total = EpochResult()
                    if config.train.sparsity > 0:
                        self.writer.histogram(
                            "bn_scales", bn_scales(self.sparse_norms), state.iteration
                        )
                if self.budget is not None:
                    timing.add_training(
                        state.iteration - since_iteration, time.perf_counter() - since
                    )
                    since, since_iteration = time.perf_counter(), state.iteration
                    self.total_iterations = self.fit_to_budget(timing, last_eval_iteration)
                ended = state.iteration >= self.total_iterations
                if (
                    state.iteration == epoch_end
                    and epochs_done % config.train.checkpoint_interval == 0
                ) or ended:
                    self.save("last.pt")
                if state.iteration in self.evaluation_points(self.total_iterations) or ended:
                    started = time.perf_counter()
                    final = self.evaluate(epoch)
                    last_eval_iteration = state.iteration
                    if final is not None and final["mAP"] > state.best_metric:
                        state.best_metric, state.best_iteration = final["mAP"], state.iteration
                        self.save("best.pt")
                        self.save("last.pt")
                    timing.add_evaluation(time.perf_counter() - started)
                    since = time.perf_counter()
        except BadSampleError as error:
            self._bad_sample(error)

        if last_eval_iteration != state.iteration:
            final = self.evaluate(max(state.iteration // self.per_epoch - 1, 0))
        if self.context.is_main and final is not None:
            self.finish(final)
        barrier(self.context)
        return 0

    def _stopped(self, result: EpochResult) -> int:
        """The exit code of an epoch that ended early; saves ``last.pt`` unless the loss
        went non-finite (the last checkpoint is the last good state)."""
        if result.stop_reason == "nonfinite":
            last = self.output_dir / "last.pt"
            kept = (
                f"the last good checkpoint is {last}"
                if last.is_file()
                else "no checkpoint was written yet"
            )
            logger.error("%s; %s", result.message, kept)
            return 1
        path = self.save("last.pt")
        logger.info(
            "%s: saved %s at iteration %d; continue with --resume",
            result.message,
            path,
            self.state.iteration,
        )
        return 0

    def _bad_sample(self, error: BadSampleError) -> NoReturn:
        """Stop on a bad sample met in training: save ``last.pt`` (one process) and
        raise the sample's error, worded for the one ``error:`` line train.py prints
        (exit code 2)."""
        message = user_message(error)  # without a loader worker's traceback
        if "data.on_bad_sample=stop" not in message:
            message += "; stopped (data.on_bad_sample=stop)"
        if self.context.is_distributed:
            # Only this rank hit the sample: a collective save would wait forever.
            # Exiting non-zero makes torchrun stop the other ranks.
            raise BadSampleError(message) from None
        path = self.save("last.pt")
        raise BadSampleError(
            f"{message}; saved {path} at iteration {self.state.iteration}: fix or remove the "
            "file, then continue with --resume"
        ) from None

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
            "train_seconds": self.elapsed(),
        }
        atomic_write_text(self.output_dir / "results.json", finite_json(summary), what="results")
        print(
            f"{final['metric']} mAP {final['mAP']:.4f} (best {self.state.best_metric:.4f}) after "
            f"{self.state.iteration} iterations in {summary['train_seconds']:.0f} s; "
            f"outputs in {self.output_dir}"
        )


def draw_examples(
    *,
    dataset: DetectionDataset,
    detections: Sequence[dict[str, np.ndarray] | None],
    class_names: list[str],
    output_dir: Path,
    count: int,
) -> None:
    """The first ``count`` images of ``dataset`` with their detections, as JPEGs in
    ``output_dir/detections``."""
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
