import json
import math
from types import SimpleNamespace

import pytest

import engine.trainer
import train
from engine.budget import RESERVE_SECONDS, TimeBudget, evaluation_points
from engine.trainer import TrainingRun
from tests.conftest import REPO_ROOT, tiny_train_overrides
from utils.checkpoint import load_checkpoint
from utils.optim import LRSchedule


def test_evaluation_points_spread_over_the_run_and_end_with_it():
    assert evaluation_points(85, 2) == [42, 85]  # round(42.5) is 42
    assert evaluation_points(100, 4) == [25, 50, 75, 100]
    assert evaluation_points(7, 1) == [7]
    assert evaluation_points(2, 5) == [1, 2]  # never two at one iteration


def test_fit_leaves_time_for_the_evaluations_still_to_come():
    budget = TimeBudget(seconds=100.0, num_evaluations=2)
    # 100 - 10 spent - the reserve: 85 s for (T - 10) iterations of 1 s and two 5-s
    # evaluations (at T / 2 and T, both still ahead): T = 85.
    assert RESERVE_SECONDS == 5.0
    fitted = budget.fit(elapsed=10.0, iteration=10, seconds_per_iteration=1.0,
                        seconds_per_evaluation=5.0, last_evaluation=-1)  # fmt: skip
    assert fitted == 85
    # With the first evaluation done at 45 only the final one is left:
    # (T - 50) + 5 <= 100 - 55 - 5.
    fitted = budget.fit(elapsed=55.0, iteration=50, seconds_per_iteration=1.0,
                        seconds_per_evaluation=5.0, last_evaluation=45)  # fmt: skip
    assert fitted == 85
    # With none done yet, both are ahead while T / 2 >= 30: (T - 30) + 10 <= 40.
    fitted = budget.fit(elapsed=55.0, iteration=30, seconds_per_iteration=1.0,
                        seconds_per_evaluation=5.0, last_evaluation=-1)  # fmt: skip
    assert fitted == 60
    # Past the budget the run ends where it is (and evaluates).
    fitted = budget.fit(elapsed=99.0, iteration=60, seconds_per_iteration=1.0,
                        seconds_per_evaluation=5.0, last_evaluation=45)  # fmt: skip
    assert fitted == 60


def test_next_fit_times_the_first_iterations_then_follows_the_run():
    budget = TimeBudget(seconds=60.0, num_evaluations=1)
    assert budget.next_fit(0, timed=0, total_iterations=11, iterations_per_epoch=13) == 10
    # After a resume nothing is timed yet: ten iterations from where it is.
    assert budget.next_fit(40, timed=0, total_iterations=90, iterations_per_epoch=13) == 50
    # Then at most a tenth of the run, or an epoch, apart.
    assert budget.next_fit(40, timed=40, total_iterations=90, iterations_per_epoch=13) == 49
    assert budget.next_fit(40, timed=40, total_iterations=900, iterations_per_epoch=13) == 53


def test_schedule_fitted_to_a_new_length_keeps_its_shape():
    schedule = LRSchedule(total_iterations=100, iterations_per_epoch=10, warmup_iterations=40,
                          warmup_factor=0.5, schedule="multistep", milestones=[5, 8],
                          gamma=0.1, min_lr_factor=0.0)  # fmt: skip
    schedule.fit_to(200)
    # Milestones keep their share (50 %, 80 %); the warm-up keeps its 40 iterations.
    assert schedule(99) == 1.0 and schedule(100) == pytest.approx(0.1)
    assert schedule(160) == pytest.approx(0.01)
    assert schedule(20) == pytest.approx(0.75)
    schedule.fit_to(80)
    # The warm-up is cut to a quarter of the run.
    assert schedule.warmup_iterations == 20 and schedule(10) == pytest.approx(0.75)
    cosine = LRSchedule(total_iterations=100, iterations_per_epoch=10, warmup_iterations=0,
                        warmup_factor=1.0, schedule="cosine", milestones=[], gamma=0.1,
                        min_lr_factor=0.0)  # fmt: skip
    cosine.fit_to(300)
    assert cosine(150) == pytest.approx(0.5) and cosine(300) == pytest.approx(0.0)


def test_budgeted_run_fits_its_length_to_the_clock(tiny_shapes_root, tmp_path, monkeypatch):
    # A simulated clock: an iteration takes 0.5 s, an evaluation 2 s, nothing else any
    # time, so the fitted lengths are known. Budget 60 s, 3 evaluations. First fit
    # (iteration 10, 5 s spent), evaluations guessed at 0.5 * 6 images / 8 / 2 = 0.1875 s:
    # (T - 10) * 0.5 + 3 * 0.1875 <= 60 - 5 - 5 gives T = 108, evaluations at 36, 72, 108.
    # After the one at 36 (21 s spent), the fit at the epoch's end (38) knows they take
    # 2 s: (T - 38) * 0.5 + 2 * 2 <= 60 - 21 - 5 gives T = 98, evaluations at 65 and 98.
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(engine.trainer, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    original_epoch, original_evaluate = engine.trainer.train_one_epoch, TrainingRun.evaluate

    def timed_epoch(parts, loader, *, state, **kwargs):
        before = state.iteration
        result = original_epoch(parts, loader, state=state, **kwargs)
        clock.now += 0.5 * (state.iteration - before)
        return result

    def timed_evaluate(self, epoch):
        clock.now += 2.0
        return original_evaluate(self, epoch)

    monkeypatch.setattr(engine.trainer, "train_one_epoch", timed_epoch)
    monkeypatch.setattr(TrainingRun, "evaluate", timed_evaluate)
    output = tmp_path / "run"
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    overrides = [*tiny_train_overrides(tiny_shapes_root, output), "train.max_minutes=1"]
    # train.epochs=3 with an evaluation each (2 iterations per epoch): 6 iterations,
    # 3 evaluations; the budget stretches the run and keeps the 3 evaluations.
    assert train.main(train.parse_args(["--config", config, *overrides])) == 0
    checkpoint = load_checkpoint(output / "last.pt")
    assert checkpoint["iteration"] == checkpoint["total_iterations"] == 98
    results = json.loads((output / "results.json").read_text())
    assert results["iterations"] == 98 and results["train_seconds"] == pytest.approx(55.0)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in records if record["kind"] == "eval"] == [36, 65, 98]
    # The schedule spans the fitted run: the cosine reaches its end at iteration 98.
    lrs = {record["iteration"]: record["lr"] for record in records if record["kind"] == "train"}
    assert lrs[50] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 49 / 98)))
    assert (output / "best.pt").is_file()
