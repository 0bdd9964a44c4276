"""``ExplorationWorkChain``: MD with one committee member from random starting frames.

The stage draws the plan with the seed, whatever the engine: the member driving the MD, and per
run its starting frame, temperature, pressure and seed. The runs are done by an engine
(:mod:`aiida_trainspot.common.engines`), chosen with ``engine`` among those registered under
``trainspot.exploration.engines``; each engine's own inputs live under a namespace of its name.
Shipped engines:

- ``ase`` (default, :mod:`.ase`): ``trainspot.ase.md`` jobs, ASE MD with the model's
  calculator, runs anywhere PyTorch runs;
- ``lammps`` (:mod:`.lammps`): one upstream aiida-lammps ``lammps.raw`` job per run, with a
  classical potential or the drawn member's own LAMMPS export (MACE or metatomic, on a LAMMPS
  built with that pair style).

At most ``max_concurrent`` processes are in flight; a failed run is reported in the summary,
never dropped in silence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import WorkChain, calcfunction, while_

from aiida_trainspot.common import throttle
from aiida_trainspot.common.engines import (
    EXPLORATION_ENGINES,
    STATE_KEY,
    engine_class,
    registered,
)
from aiida_trainspot.common.validators import validate_seed
from aiida_trainspot.data import PESData
from aiida_trainspot.training.model import PotentialModel

from .engine import ExplorationEngine
from .plan import (
    DEFAULT_PROTOCOL,
    ExplorationProtocol,
    choose_member,
    make_plan,
    protocol_problems,
    run_seeds,
)

DEFAULT_ENGINE = 'ase'


@calcfunction
def join_trajectories(
    failures: orm.Dict, sources: orm.Dict, **parts: orm.Data
) -> dict[str, orm.Data]:
    """All sampled frames in job order, and one summary of every job (failed ones included).

    ``sources`` maps a job key to the pool indices of its starting frames: a job numbers
    its frames from 0, so ``source_frame`` is mapped back to an index into the pool.
    """
    mapping = sources.get_dict()
    frames = []
    for key in sorted((k for k in parts if k.startswith('trajectory_')), key=_natural):
        part = parts[key]
        job = key[len('trajectory_') :]
        if job in mapping and len(part):
            local, _ = part.get_column('source_frame')
            pool = np.asarray(mapping[job], dtype=np.int64)[np.asarray(local, dtype=np.int64)]
            part = part.with_columns(np.arange(len(part)), {'source_frame': pool}, validate=False)
        frames.append(part)
    summaries = {
        k[len('summary_') :]: parts[k].get_dict() for k in parts if k.startswith('summary_')
    }
    trajectory = PESData.concatenate(frames) if frames else PESData()
    return {
        'trajectory': trajectory,
        'summary': orm.Dict(
            {'jobs': summaries, 'failed_jobs': failures.get_dict(), 'n_frames': len(trajectory)}
        ),
    }


def _natural(key: str) -> tuple:
    prefix, _, number = key.rpartition('_')
    return (prefix, int(number) if number.isdigit() else number)


def _validate_inputs(inputs: dict[str, Any], ctx: Any) -> str | None:
    name = inputs['engine'].value
    try:
        engine = engine_class(EXPLORATION_ENGINES, name)
    except ValueError as exception:
        return f'engine: {exception}'
    problems = protocol_problems(inputs['protocol'].get_dict())
    if problems:
        return 'protocol: ' + '; '.join(problems)
    # a wrapping workflow that excluded the model ports gives the committee itself
    excluded = ctx is not None and 'model' not in ctx and 'models' not in ctx
    has_model = excluded or 'model' in inputs or bool(inputs.get('models'))
    message = engine.validate(inputs.get(name) or {}, inputs, has_model)
    if message:
        return message
    structures = inputs.get('structures')
    if structures is not None and not (structures.n_atoms_per_frame() > 1).any():
        return 'structures: every frame is a single atom; nothing to explore'
    if inputs['n_structures'].value < 1 or inputs['max_concurrent'].value < 1:
        return 'n_structures and max_concurrent must be at least 1'
    return None


class ExplorationWorkChain(WorkChain):
    """Run MD from random starting frames and return the sampled frames."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        engines = registered(EXPLORATION_ENGINES)
        spec.input(
            'structures', valid_type=PESData, help='Pool of starting frames (single atoms skipped).'
        )
        spec.input(
            'n_structures', valid_type=orm.Int, default=lambda: orm.Int(20), help='Runs to start.'
        )
        spec.input(
            'engine',
            valid_type=orm.Str,
            default=lambda: orm.Str(DEFAULT_ENGINE),
            help=f'Which engine runs the MD: one of {list(engines)} '
            '(entry points of trainspot.exploration.engines).',
        )
        spec.input(
            'code',
            valid_type=orm.AbstractCode,
            required=False,
            help='The code the engine runs: trainspot-ase-md (ase), lmp (lammps).',
        )
        spec.input(
            'model', valid_type=PotentialModel, required=False, help='The potential driving the MD.'
        )
        spec.input_namespace(
            'models',
            valid_type=PotentialModel,
            dynamic=True,
            required=False,
            help='A committee: one member is drawn with the seed.',
        )
        spec.input(
            'protocol',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help=f'MD protocol (ExplorationProtocol) over the defaults {DEFAULT_PROTOCOL} '
            '(ranges in K and kbar; explicit `temperatures`/`pressures_kbar` lists are cycled '
            "over the runs); checked at submission with the MD jobs' own validation.",
        )
        spec.input(
            'seed',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=validate_seed,
            help='Seed of every draw.',
        )
        spec.input(
            'max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4), help='Jobs in flight.'
        )
        spec.input(
            'device', valid_type=orm.Str, default=lambda: orm.Str('cpu'), help='cpu or cuda.'
        )
        spec.input(
            'options', valid_type=orm.Dict, required=False, help='metadata.options of each job.'
        )
        for name, engine in engines.items():
            engine.define(spec, name)
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.has_work)(cls.submit_and_wait),
            cls.collect,
        )
        spec.output('trajectory', valid_type=PESData, help='Sampled frames with their MD metadata.')
        spec.output(
            'summary', valid_type=orm.Dict, help='Per job and per run: sampled, aborted, failed.'
        )
        spec.output(
            'model', valid_type=PotentialModel, required=False, help='The member that drove the MD.'
        )
        spec.exit_code(401, 'ERROR_ALL_JOBS_FAILED', message='No MD job produced frames: {detail}')

    def _engine(self) -> ExplorationEngine:
        name = self.inputs.engine.value
        return engine_class(EXPLORATION_ENGINES, name)(self, name)

    def setup(self) -> None:
        """Choose the member, draw the plan, and queue the engine's processes."""
        self.ctx.model = None
        if 'model' in self.inputs:
            self.ctx.model = self.inputs.model
        elif self.inputs.get('models'):
            label = choose_member(list(self.inputs.models), self.inputs.seed.value)
            self.ctx.model = self.inputs.models[label]
            self.report(f'driving the MD with committee member {label}')
        protocol = ExplorationProtocol.from_dict(self.inputs.protocol.get_dict())
        plan = make_plan(
            self.inputs.structures.n_atoms_per_frame(),
            self.inputs.n_structures.value,
            protocol,
            self.inputs.seed.value,
        )
        self.ctx.plan = {
            'frames': list(plan.frames),
            'temperatures': list(plan.temperatures),
            'pressures_kbar': list(plan.pressures_kbar),
        }
        # one seed per run, from the stage seed and the run index alone (every engine)
        self.ctx.seeds = run_seeds(self.inputs.seed.value, len(plan.frames))
        self.ctx[STATE_KEY] = {}
        throttle.init_queue(self.ctx, self._engine().prepare())

    def has_work(self) -> bool:
        """Whether processes are waiting or running."""
        return throttle.has_work(self.ctx)

    def submit_and_wait(self):
        """Keep at most ``max_concurrent`` processes in flight."""
        engine = self._engine()
        return throttle.submit_and_wait(self.ctx, self.inputs.max_concurrent.value, engine.submit)

    def collect(self):
        """Join the frames of every process in key order; record the ones that failed."""
        finished = {
            key: orm.load_node(pk)
            for key, pk in sorted(self.ctx.finished.items(), key=lambda item: _natural(item[0]))
        }
        collected = self._engine().collect(finished)
        for key, failure in collected.failures.items():
            self.report(f'MD job {key} failed: {failure}')
        if not collected.parts:
            detail = str(collected.failures)[:500]
            return self.exit_codes.ERROR_ALL_JOBS_FAILED.format(detail=detail)
        parts: dict[str, orm.Data] = {}
        for key, (trajectory, summary) in collected.parts.items():
            parts[f'trajectory_{key}'] = trajectory
            parts[f'summary_{key}'] = summary
        outputs = join_trajectories(
            orm.Dict(collected.failures), orm.Dict(collected.sources), **parts
        )
        self.out('trajectory', outputs['trajectory'])
        self.out('summary', outputs['summary'])
        if self.ctx.model is not None:
            self.out('model', self.ctx.model)
        self.report(
            f'sampled {len(outputs["trajectory"])} frames from {len(self.ctx.plan["frames"])} runs'
        )
        return None
