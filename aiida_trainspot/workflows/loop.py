"""Decisions of the active-learning loop, as plain functions (no AiiDA import).

The work chain asks three questions of this module: which seed a stage of an iteration draws
with, whether the campaign stops after an iteration (and why), and where a restarted campaign
picks up from the checkpoints of the run it restarts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiida_trainspot.common.seeds import derive_seed

#: The stages of one iteration, in order.
STAGES = ('labelling', 'training', 'exploration', 'evaluation')
_STAGE_IDS = {'augmentation': 0, **{name: k + 1 for k, name in enumerate(STAGES)}, 'selection': 9}
#: Checkpoint outputs of an iteration that mark each stage as done.
STAGE_CHECKPOINTS = {
    'labelling': 'labelled',
    'training': 'models',
    'exploration': 'explored',
    'evaluation': 'record',
}


def stage_seed(seed: int, iteration: int, stage: str) -> int:
    """The seed a stage of an iteration draws with: distinct per (seed, iteration, stage).

    Derived with NumPy's SeedSequence (:func:`~aiida_trainspot.common.seeds.derive_seed`), so it
    does not depend on how many draws earlier stages made, and a restarted campaign gets the same
    seeds as an uninterrupted one.
    """
    if stage not in _STAGE_IDS:
        raise ValueError(f'unknown stage {stage!r}; known: {sorted(_STAGE_IDS)}')
    return derive_seed(seed, iteration, _STAGE_IDS[stage])


@dataclass(frozen=True)
class Decision:
    """What happens after an iteration: go on, stop (``stop_reason``) or fail (``failure``)."""

    stop_reason: str | None = None
    failure: str | None = None

    @property
    def goes_on(self) -> bool:
        """True when the next iteration labels the selection."""
        return self.stop_reason is None and self.failure is None


def decide(
    *,
    iteration: int,
    max_iterations: int,
    n_candidates: int,
    n_selected: int,
    n_labels: int,
    max_labels: int | None,
) -> Decision:
    """Whether the loop goes on after ``iteration``.

    Stops when no explored frame exceeds the calibrated thresholds (``converged``), when
    ``max_iterations`` is reached, or when labelling the selection would exceed ``max_labels``.
    Fails (``no_selectable_frames``) when some frames exceed the thresholds but every one was
    rejected as unphysical: another iteration would retrain on the same data.
    """
    if n_candidates == 0:
        return Decision(stop_reason='converged')
    if iteration >= max_iterations:
        return Decision(stop_reason='max_iterations')
    if n_selected == 0:
        return Decision(failure='no_selectable_frames')
    if max_labels is not None and n_labels + n_selected > max_labels:
        return Decision(stop_reason='max_labels')
    return Decision()


@dataclass(frozen=True)
class ResumePoint:
    """Where a restarted campaign continues: ``iteration`` and its first ``stage`` to run.

    ``stage`` is one of :data:`STAGES`, or ``'done'`` when the restarted run had ended
    (converged, or stopped by a limit the new inputs may lift). ``from_iteration`` is the
    iteration whose checkpoints hold the dataset, committee and calibration to start from
    (0: none, start from the initial dataset).
    """

    iteration: int
    stage: str
    from_iteration: int


def resume_point(checkpoints: Mapping[int, Collection[str]], converged: bool) -> ResumePoint:
    """Where to continue, given the checkpoint names each iteration of the old run emitted.

    A finished iteration (it has a ``record``) continues at labelling of the next one (its
    selection); otherwise the iteration continues after its last checkpointed stage.
    """
    if not checkpoints:
        return ResumePoint(1, 'labelling', 0)
    last = max(checkpoints)
    names = set(checkpoints[last])
    if STAGE_CHECKPOINTS['evaluation'] in names:
        if converged:
            return ResumePoint(last, 'done', last)
        return ResumePoint(last + 1, 'labelling', last)
    for stage in reversed(STAGES[:-1]):
        if STAGE_CHECKPOINTS[stage] in names:
            return ResumePoint(last, STAGES[STAGES.index(stage) + 1], last)
    return ResumePoint(last, 'labelling', last - 1)
