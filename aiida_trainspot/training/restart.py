"""``TrainingMemberWorkChain``: one committee member, resumed after a walltime stop.

A ``BaseRestartWorkChain`` over the engine's training CalcJob (chosen by the
``engine`` input, so one class serves MACE and metatrain): when a run is stopped
by the scheduler's walltime, the next run starts from the checkpoints it left.
Any other failure is not retried (a crashed configuration would crash again).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_
from aiida.plugins import CalculationFactory

from .base import TrainingCalculation
from .loader import ENGINES


def training_calculation(engine: str) -> type[TrainingCalculation]:
    """The training CalcJob class of ``engine``."""
    if engine not in ENGINES:
        raise ValueError(f'engine: unknown engine {engine!r}; choose one of {list(ENGINES)}')
    return CalculationFactory(f'trainspot.{engine}.train')


class TrainingMemberWorkChain(BaseRestartWorkChain):
    """Train one model; resume from its checkpoints when it runs out of walltime."""

    _process_class = TrainingCalculation

    @property
    def process_class(self) -> type[TrainingCalculation]:
        """The engine's CalcJob (the inputs persist in checkpoints, so this survives restarts).

        Before the inputs are parsed (the constructor checks the class) it is the shared base.
        """
        engine = (getattr(self, 'inputs', None) or {}).get('engine')
        if engine is None:
            return TrainingCalculation
        return training_calculation(engine.value)

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input(
            'engine',
            valid_type=orm.Str,
            validator=lambda value, _: (
                None
                if value.value in ENGINES
                else f'engine: unknown engine {value.value!r}; choose one of {list(ENGINES)}'
            ),
            help=f'Training engine: one of {list(ENGINES)}.',
        )
        spec.expose_inputs(TrainingCalculation, namespace='train')
        spec.expose_outputs(TrainingCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.exit_code(
            310,
            'ERROR_TRAINING_FAILED',
            message='The training failed and cannot be retried: {detail}',
        )

    def get_outputs(self, node):
        """Expose the outputs every engine shares (the spec exposes the base class's)."""
        return self.exposed_outputs(node, TrainingCalculation)

    def setup(self) -> None:
        """Collect the inputs of the first run."""
        super().setup()
        self.ctx.inputs = self.exposed_inputs(TrainingCalculation, 'train')

    @process_handler(
        priority=500, exit_codes=[TrainingCalculation.exit_codes.ERROR_OUT_OF_WALLTIME]
    )
    def handle_out_of_walltime(self, node):
        """Resume from the checkpoints the interrupted run left."""
        if 'checkpoint' not in node.outputs:
            return ProcessHandlerReport(
                True,
                self.exit_codes.ERROR_TRAINING_FAILED.format(
                    detail='out of walltime without any checkpoint to resume from'
                ),
            )
        self.ctx.inputs['restart_checkpoint'] = node.outputs.checkpoint
        self.report(
            f'{node.process_label}<{node.pk}> ran out of walltime: resuming from its checkpoint'
        )
        return ProcessHandlerReport(True)

    @process_handler(
        priority=100,
        exit_codes=[
            TrainingCalculation.exit_codes.ERROR_TRAINING_CRASHED,
            TrainingCalculation.exit_codes.ERROR_MODEL_MISSING,
            TrainingCalculation.exit_codes.ERROR_METRICS_MISSING,
        ],
    )
    def handle_unrecoverable(self, node):
        """A crash repeats with the same inputs: stop with the reason."""
        return ProcessHandlerReport(
            True,
            self.exit_codes.ERROR_TRAINING_FAILED.format(detail=node.exit_message or 'unknown'),
        )
