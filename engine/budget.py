"""A training run fitted to a wall-clock budget (``train.max_minutes``).

The run's length is not known in advance: it is estimated from the first iterations and
fitted again at every stop of the loop (an epoch's end, an evaluation), from the
seconds an iteration and an evaluation have taken so far. ``train.epochs`` then only
gives the schedule its shape: multistep milestones and evaluations keep their place as
a fraction of the run, and the cosine spans whatever length fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Iterations timed before the first fit (the loader's start-up counts in them, so the
# first estimate errs on the short side).
FIRST_FIT_ITERATIONS = 10
# Kept free at the end for writing the example images, results and the last checkpoints.
RESERVE_SECONDS = 5.0
# The share of the budget a fit may be off by before the next one corrects it: the loop
# fits again at least this often (in iterations, for datasets whose epochs are long).
REFIT_SHARE = 0.1


def evaluation_points(total_iterations: int, num_evaluations: int) -> list[int]:
    """The iterations after which a run of ``total_iterations`` evaluates:
    ``num_evaluations`` evenly spaced, the last at the end (at least that one)."""
    count = max(num_evaluations, 1)
    points = {max(round(total_iterations * index / count), 1) for index in range(1, count + 1)}
    return sorted(points | {total_iterations})


@dataclass
class TimeBudget:
    """Fits a run's total iterations to ``seconds`` of wall clock.

    Args:
        seconds: the whole budget (``train.max_minutes`` * 60).
        num_evaluations: evaluations spread over the run, the final one included.
    """

    seconds: float
    num_evaluations: int

    def fit(
        self,
        *,
        elapsed: float,
        iteration: int,
        seconds_per_iteration: float,
        seconds_per_evaluation: float,
        last_evaluation: int,
    ) -> int:
        """The most total iterations whose remaining training and evaluations end within
        the budget, given ``elapsed`` seconds spent and ``iteration`` done (at least
        ``iteration``: a run past its budget stops now, then evaluates).

        Args:
            elapsed: seconds of the budget spent so far.
            iteration: iterations done.
            seconds_per_iteration: the measured cost of one iteration.
            seconds_per_evaluation: the measured (or estimated) cost of one evaluation.
            last_evaluation: the iteration of the last evaluation done (-1: none).
        """
        left = self.seconds - elapsed - RESERVE_SECONDS
        per_iteration = max(seconds_per_iteration, 1e-9)

        def fits(total: int) -> bool:
            # Evaluations still to come: from this stop on (one here, too, if the new
            # points put one here), not counting one already done here.
            pending = sum(
                1
                for point in evaluation_points(total, self.num_evaluations)
                if point >= iteration and point != last_evaluation
            )
            return (total - iteration) * per_iteration + pending * seconds_per_evaluation <= left

        low, high = iteration, iteration + max(int(left / per_iteration), 0) + 1
        if not fits(low):
            return iteration
        while high - low > 1:  # fits(low) holds, fits(high) does not
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        return low

    def next_fit(
        self, iteration: int, *, timed: int, total_iterations: int, iterations_per_epoch: int
    ) -> int:
        """The iteration of the next fit when no epoch end or evaluation comes sooner;
        ``timed``: iterations this process has timed so far (none after a resume)."""
        if timed < FIRST_FIT_ITERATIONS:
            return iteration + FIRST_FIT_ITERATIONS - timed
        step = max(1, min(iterations_per_epoch, math.ceil(total_iterations * REFIT_SHARE)))
        return iteration + step


@dataclass
class LoopTiming:
    """Seconds the loop spent training (checkpoints included) and evaluating, in this
    process, and how many iterations and evaluations they bought."""

    iterations: int = 0
    train_seconds: float = 0.0
    evaluations: int = 0
    eval_seconds: float = 0.0

    def add_training(self, iterations: int, seconds: float) -> None:
        self.iterations += iterations
        self.train_seconds += seconds

    def add_evaluation(self, seconds: float) -> None:
        self.evaluations += 1
        self.eval_seconds += seconds
