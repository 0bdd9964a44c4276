"""``AbInitioLabellingWorkChain``: energies, forces and stresses for every frame of a dataset.

The work is done by an engine (:mod:`aiida_trainspot.common.engines`), chosen with ``engine``
among those registered under ``trainspot.labelling.engines``; each engine's inputs live under a
namespace of its name. Shipped engines:

- ``qe`` (default, :mod:`.qe`): one upstream ``PwBaseWorkChain`` per frame, with one set of DFT
  settings for every frame;
- ``ase`` (:mod:`.ase`): one ``trainspot.ase.label`` job labels the whole dataset with an ASE
  calculator.

The stage keeps at most ``max_concurrent`` processes in flight; a failed frame is recorded in
the ``failed`` output with its reason, never dropped; above ``max_failed_fraction`` failed
frames the stage exits with ``ERROR_TOO_MANY_FAILURES``, its outputs still emitted.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import WorkChain, while_

from aiida_trainspot.common import throttle
from aiida_trainspot.common.engines import (
    LABELLING_ENGINES,
    STATE_KEY,
    EngineError,
    engine_class,
    registered,
)
from aiida_trainspot.data import PESData

from .engine import LabellingEngine

DEFAULT_ENGINE = 'qe'


def _validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
    """Check the engine and what it needs, before anything is stored."""
    name = inputs['engine'].value if 'engine' in inputs else DEFAULT_ENGINE  # absent: a wrapper
    try:
        engine = engine_class(LABELLING_ENGINES, name)
    except ValueError as exception:
        return f'engine: {exception}'
    dataset = inputs.get('dataset')
    if dataset is not None and len(dataset) == 0:
        return 'dataset: the dataset has no frames to label'
    return engine.validate(inputs.get(name) or {}, inputs)


def _validate_positive(value: orm.Int | None, _: Any) -> str | None:
    if value is not None and value.value < 1:
        return f'max_concurrent: must be at least 1, got {value.value}'
    return None


def _validate_fraction(value: orm.Float | None, _: Any) -> str | None:
    if value is not None and not 0.0 <= value.value <= 1.0:
        return f'max_failed_fraction: must be in [0, 1], got {value.value}'
    return None


class AbInitioLabellingWorkChain(WorkChain):
    """Label every frame of a dataset with energies, forces and stresses."""

    @classmethod
    def define(cls, spec):
        """Define the process specification: the stage's ports, then each engine's."""
        super().define(spec)
        engines = registered(LABELLING_ENGINES)
        spec.input(
            'dataset',
            valid_type=PESData,
            help='The frames to label (existing labels are replaced).',
        )
        spec.input(
            'engine',
            valid_type=orm.Str,
            default=lambda: orm.Str(DEFAULT_ENGINE),
            help=f'Which engine labels the frames: one of {list(engines)} '
            '(entry points of trainspot.labelling.engines).',
        )
        spec.input(
            'max_concurrent',
            valid_type=orm.Int,
            default=lambda: orm.Int(20),
            validator=_validate_positive,
            help='At most this many processes in flight at any time.',
        )
        spec.input(
            'max_failed_fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.2),
            validator=_validate_fraction,
            help='Exit with ERROR_TOO_MANY_FAILURES (outputs still emitted) above this fraction.',
        )
        for name, engine in engines.items():
            engine.define(spec, name)
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.has_work)(cls.submit_and_wait),
            cls.collect,
            cls.finalize,
        )
        spec.output(
            'labelled',
            valid_type=PESData,
            help='Labelled frames (energy eV, forces eV/Å, stress eV/Å³).',
        )
        spec.output(
            'failed',
            valid_type=PESData,
            help='Frames that failed, with failure_reason and exit_status.',
        )
        spec.output('summary', valid_type=orm.Dict, help='Counts, indices and failure reasons.')
        spec.exit_code(
            401,
            'ERROR_TOO_MANY_FAILURES',
            message='{n_failed} of {n_frames} frames failed (> {limit}).',
        )
        spec.exit_code(
            402, 'ERROR_ENGINE_FAILED', message='The {engine} labelling engine failed: {detail}'
        )

    def _engine(self) -> LabellingEngine:
        name = self.inputs.engine.value
        return engine_class(LABELLING_ENGINES, name)(self, name)

    def setup(self) -> None:
        """Let the engine prepare the frames and name its processes; queue them."""
        self.ctx[STATE_KEY] = {}
        keys = self._engine().prepare(self.inputs.dataset)
        throttle.init_queue(self.ctx, keys)

    def has_work(self) -> bool:
        """Whether processes are still waiting or running."""
        return throttle.has_work(self.ctx)

    def submit_and_wait(self):
        """Keep at most ``max_concurrent`` processes in flight (see :mod:`..common.throttle`)."""
        engine = self._engine()
        return throttle.submit_and_wait(self.ctx, self.inputs.max_concurrent.value, engine.submit)

    def collect(self):
        """The engine's labels and failures, exposed as the stage's outputs."""
        finished = {key: orm.load_node(pk) for key, pk in self.ctx.finished.items()}
        try:
            outputs = self._engine().collect(finished)
        except EngineError as exception:
            return self.exit_codes.ERROR_ENGINE_FAILED.format(
                engine=self.inputs.engine.value, detail=str(exception)
            )
        for name, node in outputs.items():
            self.out(name, node)
        summary = outputs['summary'].get_dict()
        self.ctx.n_failed = summary['n_failed']
        self.ctx.n_frames = summary['n_frames']
        return None

    def finalize(self):
        """Report, and exit with a named code if too many frames failed."""
        n_failed, n_frames = self.ctx.n_failed, self.ctx.n_frames
        self.report(
            f'labelled {n_frames - n_failed} of {n_frames} frames with {self.inputs.engine.value}'
        )
        limit = self.inputs.max_failed_fraction.value
        if n_frames and n_failed / n_frames > limit:
            return self.exit_codes.ERROR_TOO_MANY_FAILURES.format(
                n_failed=n_failed, n_frames=n_frames, limit=limit
            )
        return None
