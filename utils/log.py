"""Logging set-up, progress bars and the metrics writer (TensorBoard + JSON lines,
rank 0 only)."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import UserError
from utils.files import atomic_write_text

if TYPE_CHECKING:
    # Only for annotations: test.py --eval-only logs without loading torch.
    import torch


def setup_logging(is_main: bool, level: int = logging.INFO) -> None:
    """Messages from every module on stderr; other ranks only warn. Handlers already
    installed (by an embedding program or a test runner) are kept."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root.addHandler(handler)
    root.setLevel(level if is_main else logging.WARNING)


def progress_bar(iterable: Any, **kwargs: Any) -> Any:
    """tqdm that redraws at most every 30 s when stderr is not a terminal (log files)."""
    from tqdm import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


class MetricsWriteError(UserError):
    """The metrics log or the TensorBoard events could not be written (a full disk)."""


def _quiet_tensorboard_thread_errors() -> None:
    """Keep the traceback of a failed write in TensorBoard's writer thread off stderr:
    the thread keeps the exception and the next write from the training thread raises
    it, where :class:`MetricsWriter` turns it into one error line."""
    previous: Callable[[threading.ExceptHookArgs], Any] = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(
            args.exc_value, OSError
        ):
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class MetricsWriter:
    """Scalars to TensorBoard (``DIR/tensorboard``) and to ``DIR/metrics.jsonl``, one JSON
    object a line: ``{"kind": "train"|"eval"|"throughput", "iteration": N, "epoch": E, ...}``.

    A writer with ``enabled=False`` (ranks other than 0) does nothing. With
    ``resume_iteration`` (a run resumed from a checkpoint of that iteration) the lines
    and TensorBoard events logged after that iteration by the interrupted run are
    dropped: the resumed run logs those iterations again. A write that fails (a full
    disk) raises :class:`MetricsWriteError` naming the folder and the cause.
    """

    def __init__(
        self, output_dir: str | Path, enabled: bool = True, resume_iteration: int | None = None
    ) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self._tensorboard = None
        self._failed = False
        if enabled:
            _quiet_tensorboard_thread_errors()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            path = self.output_dir / "metrics.jsonl"
            if resume_iteration is not None:
                _drop_lines_after(path, resume_iteration)
            self._tensorboard = SummaryWriter(
                str(self.output_dir / "tensorboard"),
                purge_step=None if resume_iteration is None else resume_iteration + 1,
            )
            self._jsonl = path.open("a", encoding="utf-8")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            self._failed = True
            cause = error.strerror or str(error)
            raise MetricsWriteError(
                f"{self.output_dir}: could not write the metrics (metrics.jsonl, "
                f"tensorboard/): {cause}; free some space or set another train.output_dir, "
                "then continue with --resume"
            ) from None

    def write(self, kind: str, iteration: int, epoch: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "iteration": iteration, "epoch": epoch}
        with self._writing():
            for key, value in values.items():
                if hasattr(value, "item"):  # a tensor or NumPy scalar
                    value = value.item()
                record[key] = value
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"{kind}/{key}", value, iteration)
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def histogram(self, name: str, values: torch.Tensor, iteration: int) -> None:
        if self.enabled and values.numel():
            with self._writing():
                self._tensorboard.add_histogram(name, values.detach().float().cpu(), iteration)

    def close(self) -> None:
        """Flush and close; after a failed write, close without raising again (the
        run is already ending on that error)."""
        if not self.enabled:
            return
        failed_before = self._failed
        try:
            with self._writing():
                try:
                    self._tensorboard.close()
                finally:
                    self._jsonl.close()
        except MetricsWriteError:
            if not failed_before:
                raise


def _drop_lines_after(path: Path, iteration: int) -> None:
    """Rewrite the JSON-lines file ``path`` without the records past ``iteration`` (and
    without a torn last line), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
        if isinstance(record, dict) and record.get("iteration", 0) <= iteration:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept), what="metrics log")
