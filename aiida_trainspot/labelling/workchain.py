"""``AbInitioLabellingWorkChain``: energies, forces and stresses for every frame of a dataset.

Engines:

- ``qe`` (default): one upstream ``PwBaseWorkChain`` per frame (its error handlers
  included), built with ``get_builder_from_protocol`` on the real frame, so that
  convergence thresholds scale with its atom count; k-point meshes are 1 along non-periodic
  directions. Every frame gets the same DFT settings (``dft_settings``: cutoffs, smearing,
  spin, k-point density), decided once from every species (:mod:`.dft`), given by the caller
  (a campaign) or decided here from the dataset's species; they are an output. Frames with
  non-periodic axes are first padded to ``qe.vacuum`` (2D frames to what the 2D Coulomb cutoff
  needs), and the padded frames are what the labelled dataset holds.
- ``ase``: one ``trainspot.ase.label`` job labels the whole dataset with an ASE calculator.

At most ``max_concurrent`` calculations are in flight; a failed frame is recorded
in the ``failed`` output with its reason, never dropped; an SCF that did not
converge is a failure, never a label.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_
from aiida.plugins import WorkflowFactory

from aiida_trainspot.common import throttle
from aiida_trainspot.common.settings import recursive_merge
from aiida_trainspot.data import PESData

from . import dft
from .ase_calculation import AseLabelCalculation
from .qe_labels import labels_from_qe
from .qe_settings import (
    check_settings,
    decide_dft_settings,
    missing_pseudos,
    settings_arguments,
)

PwBaseWorkChain = WorkflowFactory('quantumespresso.pw.base')

ENGINES = ('qe', 'ase')
FORCED_PARAMETERS = {'CONTROL': {'calculation': 'scf', 'tprnfor': True, 'tstress': True}}
LABEL_KEYS = ('energy', 'forces', 'stress')


@calcfunction
def pad_frames(dataset: PESData, vacuum: orm.Float) -> PESData:
    """The dataset with every frame short of vacuum padded (:func:`.dft.pad_frame`).

    Frames that have enough vacuum are shared with ``dataset``; the order is kept, and padded
    frames lose any labels (they were computed for another cell).
    """
    from ase import Atoms

    padded = [
        i for i, atoms in enumerate(dataset.iter_atoms()) if dft.needs_padding(atoms, vacuum.value)
    ]
    records = []
    for record in dataset.subset(padded).to_frames():
        atoms = Atoms(
            numbers=record['numbers'],
            positions=record['positions'],
            cell=record['cell'],
            pbc=record['pbc'],
        )
        atoms = dft.pad_frame(atoms, vacuum.value)
        record = {key: value for key, value in record.items() if key not in LABEL_KEYS}
        records.append({**record, 'positions': atoms.positions, 'cell': atoms.cell.array})
    joined = PESData.concatenate([dataset, PESData.from_frames(records)])
    position = {index: len(dataset) + k for k, index in enumerate(padded)}
    return joined.subset([position.get(i, i) for i in range(len(dataset))])


@calcfunction
def frames_to_structures(dataset: PESData) -> dict[str, orm.StructureData]:
    """One ``StructureData`` per frame (``frame_<index>``), as pw.x inputs."""
    return {
        f'frame_{i}': orm.StructureData(ase=atoms) for i, atoms in enumerate(dataset.iter_atoms())
    }


@calcfunction
def assemble_qe_labels(dataset: PESData, failures: orm.Dict, **results: orm.Data) -> dict[str, Any]:
    """Turn pw.x outputs into labels; frames without usable outputs go to ``failed``.

    ``results`` holds ``parameters_<i>`` and ``trajectory_<i>`` of every frame whose
    PwBaseWorkChain finished ok; ``failures`` maps the other frames to
    ``{'exit_status': int, 'reason': str}``.
    """
    failed = {int(k): dict(v) for k, v in failures.get_dict().items()}
    columns = dataset.get_columns([])
    pbc = columns.frame['pbc']
    indices, energies, forces, stresses, stress_present = [], [], [], [], []
    for key in sorted(
        (k for k in results if k.startswith('parameters_')), key=lambda k: int(k[11:])
    ):
        index = int(key[len('parameters_') :])
        trajectory = results[f'trajectory_{index}']
        arrays = trajectory.get_arraynames()
        try:
            energy, force, stress = labels_from_qe(
                results[key].get('energy'),
                trajectory.get_array('forces')[-1] if 'forces' in arrays else None,
                trajectory.get_array('stress')[-1] if 'stress' in arrays else None,
                int(columns.n_atoms[index]),
                pbc[index],
            )
        except ValueError as exception:
            failed[index] = {'exit_status': 0, 'reason': f'unusable pw.x output: {exception}'}
            continue
        indices.append(index)
        energies.append(energy)
        forces.append(force)
        stresses.append(stress if stress is not None else np.full(6, np.nan))
        stress_present.append(stress is not None)
    labelled = dataset.with_columns(
        indices,
        {
            'energy': np.array(energies, dtype=float),
            'stress': np.array(stresses, dtype=float).reshape(-1, 6),
        },
        {'forces': np.concatenate(forces) if forces else np.zeros((0, 3))},
        {'stress': np.array(stress_present, dtype=bool)},
    ).subset(indices)
    failed_indices = sorted(failed)
    failed_dataset = dataset.subset(failed_indices).with_columns(
        np.arange(len(failed_indices)),
        {
            'failure_reason': np.array([failed[i]['reason'] for i in failed_indices], dtype=object),
            'exit_status': np.array(
                [failed[i]['exit_status'] for i in failed_indices], dtype=np.int64
            ),
        },
        validate=False,
    )
    summary = {
        'engine': 'qe',
        'n_frames': len(dataset),
        'n_labelled': len(indices),
        'n_failed': len(failed_indices),
        'n_stress': int(np.sum(stress_present)),
        'labelled_indices': indices,
        'failed_indices': failed_indices,
        'failure_reasons': {str(i): failed[i]['reason'] for i in failed_indices},
    }
    return {'labelled': labelled, 'failed': failed_dataset, 'summary': orm.Dict(summary)}


def _failure_reason(node: orm.ProcessNode) -> str:
    """The work chain's exit message and that of its last calculation, in one line."""
    reason = f'{node.process_label}<{node.pk}>: {node.exit_message or node.process_state.value}'
    calculations = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    if calculations:
        last = max(calculations, key=lambda n: n.ctime)
        reason += (
            f' (last {last.process_label}<{last.pk}> exit {last.exit_status}: {last.exit_message})'
        )
    return reason


def _validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
    """Check the engine and what it needs, before anything is stored."""
    engine = inputs['engine'].value if 'engine' in inputs else 'qe'  # absent: a wrapper's defaults
    if engine not in ENGINES:
        return f'engine: unknown engine {engine!r}; choose one of {list(ENGINES)}'
    dataset = inputs.get('dataset')
    if dataset is not None and len(dataset) == 0:
        return 'dataset: the dataset has no frames to label'
    if engine == 'ase':
        ase = inputs.get('ase', {})
        missing = [port for port in ('code', 'calculator') if port not in ase]
        if missing:
            return f'ase: the ase engine needs {", ".join("ase." + p for p in missing)}'
        return None
    qe = inputs.get('qe', {})
    missing = [port for port in ('code', 'pseudo_family') if port not in qe]
    if missing:
        return f'qe: the qe engine needs {", ".join("qe." + p for p in missing)}'
    if 'overrides' in qe:
        spec = PwBaseWorkChain.spec().inputs
        message = dft.unknown_override(qe['overrides'].get_dict(), spec, spec['pw'])
        if message:
            return f'qe.overrides: {message}'
    species = dataset.species if dataset is not None else []
    message = missing_pseudos(qe['pseudo_family'].value, species)
    if message:
        return f'qe.pseudo_family: {message}'
    if 'dft_settings' in qe:
        message = check_settings(qe['dft_settings'].get_dict(), species, qe['pseudo_family'].value)
        if message:
            return f'qe.dft_settings: {message}'
    return None


def _validate_protocol(value: orm.Str | None, _: Any) -> str | None:
    if value is not None:
        try:
            dft.qe_protocol(value.value)
        except ValueError as exception:
            return f'qe.protocol: {exception}'
    return None


def _validate_vacuum(value: orm.Float | None, _: Any) -> str | None:
    if value is not None and not value.value > 0:
        return f'qe.vacuum: must be a positive length in Å, got {value.value}'
    return None


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
        """Define the process specification."""
        super().define(spec)
        spec.input(
            'dataset',
            valid_type=PESData,
            help='The frames to label (existing labels are replaced).',
        )
        spec.input(
            'engine',
            valid_type=orm.Str,
            default=lambda: orm.Str('qe'),
            help=f'Which code labels the frames: one of {list(ENGINES)}.',
        )
        spec.input(
            'max_concurrent',
            valid_type=orm.Int,
            default=lambda: orm.Int(20),
            validator=_validate_positive,
            help='At most this many calculations in flight at any time.',
        )
        spec.input(
            'max_failed_fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.2),
            validator=_validate_fraction,
            help='Exit with ERROR_TOO_MANY_FAILURES (outputs still emitted) above this fraction.',
        )
        spec.input_namespace('qe', required=False, help='Inputs of the `qe` engine.')
        spec.input(
            'qe.code',
            valid_type=orm.AbstractCode,
            required=False,
            help='A `quantumespresso.pw` code.',
        )
        spec.input(
            'qe.pseudo_family',
            valid_type=orm.Str,
            required=False,
            help='Label of an aiida-pseudo family covering every species of the dataset.',
        )
        spec.input(
            'qe.protocol',
            valid_type=orm.Str,
            default=lambda: orm.Str(dft.DEFAULT_PROTOCOL),
            validator=_validate_protocol,
            help=f'Protocol: one of {list(dft.QE_PROTOCOLS)} (moderate = aiida-quantumespresso '
            "'balanced', precise = 'stringent').",
        )
        spec.input(
            'qe.vacuum',
            valid_type=orm.Float,
            default=lambda: orm.Float(dft.DEFAULT_VACUUM),
            validator=_validate_vacuum,
            help='Vacuum (Å) every frame gets along each non-periodic axis before pw.x; 2D frames '
            'get more where the 2D Coulomb cutoff needs it.',
        )
        spec.input(
            'qe.dft_settings',
            valid_type=orm.Dict,
            required=False,
            help='The DFT settings of every frame (cutoffs, smearing, spin, k-point density), '
            "as a campaign's labelling stage output them; default: decided from the dataset's "
            'species, the protocol and the family.',
        )
        spec.input(
            'qe.overrides',
            valid_type=orm.Dict,
            required=False,
            help='Overrides of the PwBaseWorkChain protocol inputs (e.g. kpoints_distance, '
            'pw.parameters); calculation=scf, tprnfor and tstress are always on.',
        )
        spec.input(
            'qe.options',
            valid_type=orm.Dict,
            required=False,
            help='metadata.options of every pw.x job (resources, max_wallclock_seconds, ...).',
        )
        spec.input(
            'qe.spin_polarised',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='Collinear spin polarisation (off by default: no magnetism unless asked).',
        )
        spec.expose_inputs(
            AseLabelCalculation,
            namespace='ase',
            exclude=('dataset',),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Inputs of the `ase` engine.',
            },
        )
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.is_qe)(
                cls.prepare_frames,
                cls.make_structures,
                while_(cls.has_work)(cls.submit_and_wait),
                cls.collect_qe,
            ).else_(
                cls.run_ase,
                cls.collect_ase,
            ),
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
        spec.output(
            'dft_settings',
            valid_type=orm.Dict,
            required=False,
            help='The DFT settings every frame was computed with (qe engine).',
        )
        spec.exit_code(
            401,
            'ERROR_TOO_MANY_FAILURES',
            message='{n_failed} of {n_frames} frames failed (> {limit}).',
        )
        spec.exit_code(
            402, 'ERROR_ASE_JOB_FAILED', message='The ASE labelling job failed: {detail}'
        )

    def setup(self) -> None:
        """Initialise the queue of frames."""
        throttle.init_queue(self.ctx, [str(i) for i in range(len(self.inputs.dataset))])

    def is_qe(self) -> bool:
        """Whether the qe engine labels the frames."""
        return self.inputs.engine.value == 'qe'

    def prepare_frames(self) -> None:
        """Pad frames short of vacuum; decide the DFT settings unless given."""
        qe = self.inputs.qe
        dataset = self.inputs.dataset
        settings = qe.get('dft_settings')
        vacuum = settings['vacuum'] if settings is not None else qe.vacuum.value
        if any(dft.needs_padding(atoms, vacuum) for atoms in dataset.iter_atoms()):
            vacuum_node = qe.vacuum if settings is None else orm.Float(vacuum)
            dataset = pad_frames(dataset, vacuum_node, metadata={'call_link_label': 'pad'})
        self.ctx.frames = dataset
        if settings is None:
            settings = decide_dft_settings(
                **settings_arguments(qe, dataset.species),
                metadata={'call_link_label': 'dft_settings'},
            )
        self.ctx.dft_settings = settings
        self.out('dft_settings', settings)

    def make_structures(self) -> None:
        """Turn the frames into StructureData (with provenance)."""
        self.ctx.structures = frames_to_structures(self.ctx.frames)

    def has_work(self) -> bool:
        """Whether frames are still waiting or running."""
        return throttle.has_work(self.ctx)

    def submit_and_wait(self):
        """Keep at most ``max_concurrent`` pw.x runs in flight (see :mod:`..common.throttle`)."""
        limit = self.inputs.max_concurrent.value
        return throttle.submit_and_wait(
            self.ctx, limit, lambda key: self.submit(self._pw_builder(int(key)))
        )

    def _pw_builder(self, index: int):
        from aiida_quantumespresso.common.types import SpinType

        qe = self.inputs.qe
        settings = self.ctx.dft_settings.get_dict()
        structure = self.ctx.structures[f'frame_{index}']
        user = qe.overrides.get_dict() if 'overrides' in qe else {}
        overrides = dft.builder_overrides(settings, user)
        overrides = recursive_merge(overrides, {'pw': {'parameters': FORCED_PARAMETERS}})
        spin = SpinType.COLLINEAR if settings['spin_polarised'] else SpinType.NONE
        options = qe.options.get_dict() if 'options' in qe else None
        with warnings.catch_warnings():
            # the protocol warns on every non-3D frame; 2D frames get assume_isolated='2D' from it
            warnings.simplefilter('ignore')
            builder = PwBaseWorkChain.get_builder_from_protocol(
                qe.code,
                structure,
                protocol=settings['protocol'],
                overrides=overrides,
                spin_type=spin,
                options=options,
            )
        parameters = builder.pw.parameters.get_dict()
        isolated = parameters.get('SYSTEM', {}).get('assume_isolated')
        if isolated == '2D' and not dft.two_d_cutoff_valid(
            structure.get_ase(), settings['density_tail']
        ):
            raise ValueError(f'frame {index}: too little vacuum for the 2D cutoff after padding')
        builder.metadata.call_link_label = f'pw_frame_{index}'
        return builder

    def collect_qe(self) -> None:
        """Assemble labels from the finished runs; record every failure with its reason."""
        results: dict[str, orm.Data] = {}
        failures: dict[str, dict[str, Any]] = {}
        for key, pk in self.ctx.finished.items():
            node = orm.load_node(pk)
            if node.is_finished_ok and 'output_trajectory' in node.outputs:
                results[f'parameters_{key}'] = node.outputs.output_parameters
                results[f'trajectory_{key}'] = node.outputs.output_trajectory
            else:
                failures[key] = {
                    'exit_status': node.exit_status if node.exit_status is not None else -1,
                    'reason': _failure_reason(node),
                }
        outputs = assemble_qe_labels(self.ctx.frames, orm.Dict(failures), **results)
        self._expose(outputs)

    def run_ase(self):
        """Label all frames in one ASE job."""
        inputs = self.exposed_inputs(AseLabelCalculation, namespace='ase')
        inputs['dataset'] = self.inputs.dataset
        return ToContext(ase_job=self.submit(AseLabelCalculation, **inputs))

    def collect_ase(self):
        """Expose the job's outputs; a job that produced none is a failure of the stage."""
        job = self.ctx.ase_job
        if not all(name in job.outputs for name in ('labelled', 'failed', 'summary')):
            detail = job.exit_message or f'exit status {job.exit_status}'
            return self.exit_codes.ERROR_ASE_JOB_FAILED.format(detail=detail)
        self._expose({name: job.outputs[name] for name in ('labelled', 'failed', 'summary')})
        return None

    def _expose(self, outputs: dict[str, orm.Data]) -> None:
        for name, node in outputs.items():
            self.out(name, node)
        summary = outputs['summary'].get_dict()
        self.ctx.n_failed = summary['n_failed']
        self.ctx.n_frames = summary['n_frames']

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
