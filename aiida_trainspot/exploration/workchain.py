"""``ExplorationWorkChain``: MD with one committee member from random starting frames.

Engines: ``ase`` (``trainspot.ase.md``: ASE MD with the model's calculator, runs
anywhere PyTorch runs) and ``lammps`` (upstream aiida-lammps ``lammps.raw`` with a
classical potential, or the drawn member's own LAMMPS export, MACE or metatomic, on a
LAMMPS built with that pair style). The plan (member, starting frames, temperatures
and pressures) is drawn with the seed; at most ``max_concurrent`` jobs are in
flight; a failed run is reported in the summary, never dropped in silence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import WorkChain, calcfunction, if_, while_
from aiida.plugins import CalculationFactory

from aiida_trainspot.common import throttle
from aiida_trainspot.data import PESData
from aiida_trainspot.data.operations import subset_dataset
from aiida_trainspot.training.model import PotentialModel

from .ase_calculation import AseMdCalculation, run_id_prefix
from .lammps_engine import (
    classical_potential,
    collect_frames,
    export_lammps_model,
    export_problem,
    md_inputs,
    model_potential,
    needs_export,
)
from .plan import (
    DEFAULT_PROTOCOL,
    ExplorationProtocol,
    choose_member,
    make_plan,
    protocol_problems,
    run_seeds,
)

ENGINES = ('ase', 'lammps')


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


def _lammps_export_problem(inputs: dict[str, Any]) -> str | None:
    """A model that cannot run in LAMMPS (its export failed at training), named by its port."""
    models = {'model': inputs['model']} if 'model' in inputs else {}
    models.update({f'models.{k}': v for k, v in (inputs.get('models') or {}).items()})
    for port, model in sorted(models.items()):
        problem = export_problem(model)
        if problem:
            return f'{port}: {problem}'
    return None


def _validate_inputs(inputs: dict[str, Any], ctx: Any) -> str | None:
    engine = inputs['engine'].value
    if engine not in ENGINES:
        return f'engine: unknown engine {engine!r}; choose one of {list(ENGINES)}'
    problems = protocol_problems(inputs['protocol'].get_dict())
    if problems:
        return 'protocol: ' + '; '.join(problems)
    # a wrapping workflow that excluded the model ports gives the committee itself
    excluded = ctx is not None and 'model' not in ctx and 'models' not in ctx
    has_model = excluded or 'model' in inputs or bool(inputs.get('models'))
    lammps = inputs.get('lammps', {})
    if engine == 'ase' and not has_model:
        return 'model: the ase engine needs a model (or models, one drawn at random)'
    if engine == 'lammps' and not has_model and 'pair_style' not in lammps:
        return (
            'lammps.pair_style: give a classical pair style (with lammps.parameter_file) or a model'
        )
    if engine == 'lammps':
        message = _lammps_export_problem(inputs)
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
        spec.input(
            'structures', valid_type=PESData, help='Pool of starting frames (single atoms skipped).'
        )
        spec.input(
            'n_structures', valid_type=orm.Int, default=lambda: orm.Int(20), help='Runs to start.'
        )
        spec.input(
            'engine', valid_type=orm.Str, default=lambda: orm.Str('ase'), help='ase or lammps.'
        )
        spec.input(
            'code', valid_type=orm.AbstractCode, help='trainspot-ase-md or lmp (lammps.raw).'
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
            'seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='Seed of every draw.'
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
        spec.input_namespace(
            'lammps',
            required=False,
            help='Classical potential of the lammps engine (without a model). A model runs as '
            'its own LAMMPS export, stored with it by the training.',
        )
        spec.input('lammps.pair_style', valid_type=orm.Str, required=False, help='e.g. tersoff.')
        spec.input('lammps.parameter_file', valid_type=orm.SinglefileData, required=False)
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.is_ase)(cls.prepare_ase).else_(cls.prepare_lammps),
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

    def setup(self) -> None:
        """Choose the member and draw the plan."""
        self.ctx.model = None
        if 'model' in self.inputs:
            self.ctx.model = self.inputs.model
        elif self.inputs.get('models'):
            label = choose_member(list(self.inputs.models), self.inputs.seed.value)
            self.ctx.model = self.inputs.models[label]
            self.report(f'driving the MD with committee member {label}')
        plan = make_plan(
            self.inputs.structures.n_atoms_per_frame(),
            self.inputs.n_structures.value,
            self._protocol(),
            self.inputs.seed.value,
        )
        self.ctx.plan = {
            'frames': list(plan.frames),
            'temperatures': list(plan.temperatures),
            'pressures_kbar': list(plan.pressures_kbar),
        }
        # one seed per run, from the stage seed and the run index alone (both engines)
        self.ctx.seeds = run_seeds(self.inputs.seed.value, len(plan.frames))

    def _protocol(self) -> ExplorationProtocol:
        """The ``protocol`` input, parsed (the input validator has checked it)."""
        return ExplorationProtocol.from_dict(self.inputs.protocol.get_dict())

    def is_ase(self) -> bool:
        """Whether the ase engine runs the MD."""
        return self.inputs.engine.value == 'ase'

    def prepare_ase(self) -> None:
        """Split the runs into at most ``max_concurrent`` jobs of consecutive runs.

        Each job runs its frames in turn; every run carries its own seed and id (``_submit_ase``),
        and consecutive runs per job keep the joined trajectory in run order: neither the frames
        nor their order depend on ``max_concurrent``. Run ids are ``<prefix>-<run>``, the prefix
        a digest of the member, the pool, the protocol and the seed (the same inputs give the same
        ids).
        """
        n_runs = len(self.ctx.plan['frames'])
        n_jobs = min(self.inputs.max_concurrent.value, n_runs)
        chunks = np.array_split(np.arange(n_runs), n_jobs)
        self.ctx.jobs = {str(j): [int(r) for r in chunk] for j, chunk in enumerate(chunks)}
        self.ctx.run_id_prefix = run_id_prefix(
            {
                'model': self.ctx.model,
                'structures': self.inputs.structures,
                'protocol': self.inputs.protocol.get_dict(),
                'seed': self.inputs.seed.value,
            }
        )
        throttle.init_queue(self.ctx, list(self.ctx.jobs))

    def prepare_lammps(self) -> None:
        """One LAMMPS job per run."""
        throttle.init_queue(self.ctx, [str(i) for i in range(len(self.ctx.plan['frames']))])
        self.ctx.conversions = {}

    def has_work(self) -> bool:
        """Whether jobs are waiting or running."""
        return throttle.has_work(self.ctx)

    def submit_and_wait(self):
        """Keep at most ``max_concurrent`` jobs in flight."""
        submit = self._submit_ase if self.is_ase() else self._submit_lammps
        return throttle.submit_and_wait(self.ctx, self.inputs.max_concurrent.value, submit)

    def _submit_ase(self, key: str):
        runs = self.ctx.jobs[key]
        plan = self.ctx.plan
        frames = subset_dataset(self.inputs.structures, orm.List([plan['frames'][r] for r in runs]))
        parameters = self._protocol().job_parameters(
            [plan['temperatures'][r] for r in runs],
            [plan['pressures_kbar'][r] for r in runs],
            seeds=[self.ctx.seeds[r] for r in runs],
            run_ids=[f'{self.ctx.run_id_prefix}-{r}' for r in runs],
        )
        inputs = {
            'code': self.inputs.code,
            'model': self.ctx.model,
            'structures': frames,
            'parameters': orm.Dict(parameters),
            'device': self.inputs.device,
            'metadata': {'call_link_label': f'md_job_{key}'},
        }
        if 'options' in self.inputs:
            inputs['metadata']['options'] = self.inputs.options.get_dict()
        return self.submit(AseMdCalculation, **inputs)

    def _potential(self):
        """The drawn member as LAMMPS loads it (its stored export), else the classical potential.

        A MACE member without a stored export (made by ``PotentialModel.from_files``) is
        converted once by the calcfunction :func:`.lammps_engine.export_lammps_model`; every
        run then gets that file.
        """
        if self.ctx.model is None:
            lammps = self.inputs.lammps
            return classical_potential(lammps['pair_style'].value, lammps.get('parameter_file'))
        export = None
        if needs_export(self.ctx.model):
            if 'lammps_export' not in self.ctx:
                node = export_lammps_model(self.ctx.model)
                self.ctx.lammps_export = node.pk
                self.report(f'converted model <{self.ctx.model.pk}> for LAMMPS: <{node.pk}>')
            export = orm.load_node(self.ctx.lammps_export)
        return model_potential(self.ctx.model, lammps_model=export, device=self.inputs.device.value)

    def _submit_lammps(self, key: str):
        run = int(key)
        plan = self.ctx.plan
        frame = plan['frames'][run]
        atoms = self.inputs.structures.get_atoms(frame)
        settings = self._protocol().lammps_settings(
            plan['temperatures'][run],
            plan['pressures_kbar'][run],
            self.ctx.seeds[run],
        )
        options = self.inputs.options.get_dict() if 'options' in self.inputs else None
        inputs, conversion = md_inputs(
            self.inputs.code,
            atoms,
            self._potential(),
            settings,
            run_id=run,
            source_frame=frame,
            options=options,
        )
        conversion.store()
        self.ctx.conversions[key] = conversion.pk
        inputs['metadata']['call_link_label'] = f'md_run_{run}'
        return self.submit(CalculationFactory('lammps.raw'), **inputs)

    def collect(self):
        """Join the frames of every job; record the jobs that failed."""
        parts: dict[str, orm.Data] = {}
        failures: dict[str, Any] = {}
        finished = sorted(self.ctx.finished.items(), key=lambda item: int(item[0]))
        if self.is_ase():
            for key, pk in finished:
                node = orm.load_node(pk)
                if 'trajectory' in node.outputs:
                    parts[f'trajectory_{key}'] = node.outputs.trajectory
                    parts[f'summary_{key}'] = node.outputs.summary
                if not node.is_finished_ok:
                    failures[key] = {
                        'pk': pk,
                        'exit_status': node.exit_status,
                        'message': node.exit_message,
                    }
        else:
            good = []
            for key, pk in finished:
                node = orm.load_node(pk)
                if node.is_finished_ok and 'retrieved' in node.outputs:
                    good.append((node, orm.load_node(self.ctx.conversions[key])))
                else:
                    failures[key] = {
                        'pk': pk,
                        'exit_status': node.exit_status,
                        'message': node.exit_message,
                    }
            if good:
                lammps = collect_frames([n for n, _ in good], [c for _, c in good])
                parts['trajectory_0'] = lammps['frames']
                parts['summary_0'] = lammps['summary']
        for key, failure in failures.items():
            self.report(f'MD job {key} failed: {failure}')
        if not any(k.startswith('trajectory_') for k in parts):
            return self.exit_codes.ERROR_ALL_JOBS_FAILED.format(detail=str(failures)[:500])
        sources = {}
        if self.is_ase():
            sources = {
                key: [self.ctx.plan['frames'][r] for r in runs]
                for key, runs in self.ctx.jobs.items()
            }
        outputs = join_trajectories(orm.Dict(failures), orm.Dict(sources), **parts)
        self.out('trajectory', outputs['trajectory'])
        self.out('summary', outputs['summary'])
        if self.ctx.model is not None:
            self.out('model', self.ctx.model)
        self.report(
            f'sampled {len(outputs["trajectory"])} frames from {len(self.ctx.plan["frames"])} runs'
        )
        return None
