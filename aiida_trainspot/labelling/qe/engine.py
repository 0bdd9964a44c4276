"""The ``qe`` labelling engine: one upstream ``PwBaseWorkChain`` per frame.

Each frame runs in aiida-quantumespresso's ``PwBaseWorkChain`` (its error handlers included),
built with ``get_builder_from_protocol`` on the real frame, so that convergence thresholds scale
with its atom count; k-point meshes are 1 along non-periodic directions. Every frame gets the
same DFT settings (``qe.dft_settings``: cutoffs, smearing, spin, k-point density), decided once
from every species (:mod:`.dft`), given by the caller (a campaign) or decided here from the
dataset's species; they are an output (``dft_settings``). Frames with non-periodic axes are
first padded to ``qe.vacuum`` (2D frames to what the 2D Coulomb cutoff needs), and the padded
frames are what the labelled dataset holds. An SCF that did not converge is a failure, never a
label.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from aiida.plugins import WorkflowFactory

from aiida_trainspot.common.settings import recursive_merge
from aiida_trainspot.data import PESData

from ..engine import LabellingEngine, failed_frames, labelling_summary
from . import dft
from .labels import labels_from_qe
from .settings import check_settings, decide_dft_settings, missing_pseudos, settings_arguments

PwBaseWorkChain = WorkflowFactory('quantumespresso.pw.base')

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
    failed = {int(k): (v['exit_status'], v['reason']) for k, v in failures.get_dict().items()}
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
            failed[index] = (0, f'unusable pw.x output: {exception}')
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
    summary = labelling_summary(
        len(dataset), indices, failed, int(np.sum(stress_present)), engine='qe'
    )
    return {
        'labelled': labelled,
        'failed': failed_frames(dataset, failed),
        'summary': orm.Dict(summary),
    }


def failure_reason(node: orm.ProcessNode) -> str:
    """The work chain's exit message and that of its last calculation, in one line."""
    reason = f'{node.process_label}<{node.pk}>: {node.exit_message or node.process_state.value}'
    calculations = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    if calculations:
        last = max(calculations, key=lambda n: n.ctime)
        reason += (
            f' (last {last.process_label}<{last.pk}> exit {last.exit_status}: {last.exit_message})'
        )
    return reason


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


class QeEngine(LabellingEngine):
    """Label each frame with pw.x through aiida-quantumespresso's ``PwBaseWorkChain``."""

    @classmethod
    def define(cls, spec: Any, namespace: str) -> None:
        """The ``qe`` namespace (code, pseudo family, protocol, settings) and ``dft_settings``."""
        spec.input_namespace(namespace, required=False, help='Inputs of the `qe` engine.')
        spec.input(
            f'{namespace}.code',
            valid_type=orm.AbstractCode,
            required=False,
            help='A `quantumespresso.pw` code.',
        )
        spec.input(
            f'{namespace}.pseudo_family',
            valid_type=orm.Str,
            required=False,
            help='Label of an aiida-pseudo family covering every species of the dataset.',
        )
        spec.input(
            f'{namespace}.protocol',
            valid_type=orm.Str,
            default=lambda: orm.Str(dft.DEFAULT_PROTOCOL),
            validator=_validate_protocol,
            help=f'Protocol: one of {list(dft.QE_PROTOCOLS)} (moderate = aiida-quantumespresso '
            "'balanced', precise = 'stringent').",
        )
        spec.input(
            f'{namespace}.vacuum',
            valid_type=orm.Float,
            default=lambda: orm.Float(dft.DEFAULT_VACUUM),
            validator=_validate_vacuum,
            help='Vacuum (Å) every frame gets along each non-periodic axis before pw.x; 2D frames '
            'get more where the 2D Coulomb cutoff needs it.',
        )
        spec.input(
            f'{namespace}.dft_settings',
            valid_type=orm.Dict,
            required=False,
            help='The DFT settings of every frame (cutoffs, smearing, spin, k-point density), '
            "as a campaign's labelling stage output them; default: decided from the dataset's "
            'species, the protocol and the family.',
        )
        spec.input(
            f'{namespace}.overrides',
            valid_type=orm.Dict,
            required=False,
            help='Overrides of the PwBaseWorkChain protocol inputs (e.g. kpoints_distance, '
            'pw.parameters); calculation=scf, tprnfor and tstress are always on.',
        )
        spec.input(
            f'{namespace}.options',
            valid_type=orm.Dict,
            required=False,
            help='metadata.options of every pw.x job (resources, max_wallclock_seconds, ...).',
        )
        spec.input(
            f'{namespace}.spin_polarised',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='Collinear spin polarisation (off by default: no magnetism unless asked).',
        )
        spec.output(
            'dft_settings',
            valid_type=orm.Dict,
            required=False,
            help='The DFT settings every frame was computed with (qe engine).',
        )

    @classmethod
    def validate(cls, inputs: Mapping[str, Any], stage_inputs: Mapping[str, Any]) -> str | None:
        """A code and a pseudo family covering the dataset; overrides and settings that fit."""
        missing = [port for port in ('code', 'pseudo_family') if port not in inputs]
        if missing:
            return f'qe: the qe engine needs {", ".join("qe." + p for p in missing)}'
        if 'overrides' in inputs:
            spec = PwBaseWorkChain.spec().inputs
            message = dft.unknown_override(inputs['overrides'].get_dict(), spec, spec['pw'])
            if message:
                return f'qe.overrides: {message}'
        dataset = stage_inputs.get('dataset')
        species = dataset.species if dataset is not None else []
        message = missing_pseudos(inputs['pseudo_family'].value, species)
        if message:
            return f'qe.pseudo_family: {message}'
        if 'dft_settings' in inputs:
            family = inputs['pseudo_family'].value
            message = check_settings(inputs['dft_settings'].get_dict(), species, family)
            if message:
                return f'qe.dft_settings: {message}'
        return None

    @classmethod
    def campaign_settings(
        cls, inputs: Mapping[str, Any], species: Iterable[str], restored: Any = None
    ) -> Any:
        """One set of DFT settings: restored by a restart, given as ``dft_settings``, or decided.

        Decided from every species the campaign can contain (not only the first frames), so
        that later iterations, whose frames come from MD, are computed exactly like the first.
        """
        if 'pseudo_family' not in inputs:
            return None
        if restored is not None:
            return restored
        if 'dft_settings' in inputs:
            return inputs['dft_settings']
        return decide_dft_settings(
            **settings_arguments(inputs, species), metadata={'call_link_label': 'dft_settings'}
        )

    @classmethod
    def with_campaign_settings(cls, inputs: dict[str, Any], settings: Any) -> dict[str, Any]:
        """The ``qe`` namespace with ``dft_settings`` set."""
        return {**inputs, 'dft_settings': settings}

    @classmethod
    def describe_settings(cls, settings: Any) -> str:
        """Species, cutoffs and protocol."""
        system = settings['system']
        return (
            f'DFT settings for {settings["species"]}: ecutwfc {system["ecutwfc"]} '
            f'Ry, ecutrho {system["ecutrho"]} Ry, protocol {settings["protocol"]}'
        )

    def prepare(self, dataset: PESData) -> list[str]:
        """Pad frames short of vacuum, decide the DFT settings unless given, one key per frame."""
        qe = self.inputs
        settings = qe.get('dft_settings')
        vacuum = settings['vacuum'] if settings is not None else qe.vacuum.value
        if any(dft.needs_padding(atoms, vacuum) for atoms in dataset.iter_atoms()):
            vacuum_node = qe.vacuum if settings is None else orm.Float(vacuum)
            dataset = pad_frames(dataset, vacuum_node, metadata={'call_link_label': 'pad'})
        self.state['frames'] = dataset
        if settings is None:
            settings = decide_dft_settings(
                **settings_arguments(qe, dataset.species),
                metadata={'call_link_label': 'dft_settings'},
            )
        self.state['dft_settings'] = settings
        self.process.out('dft_settings', settings)
        self.state['structures'] = frames_to_structures(dataset)
        return [str(i) for i in range(len(dataset))]

    def submit(self, key: str) -> Any:
        """One ``PwBaseWorkChain`` for frame ``key``."""
        return self.process.submit(self._pw_builder(int(key)))

    def _pw_builder(self, index: int):
        from aiida_quantumespresso.common.types import SpinType

        qe = self.inputs
        settings = self.state['dft_settings'].get_dict()
        structure = self.state['structures'][f'frame_{index}']
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

    def collect(self, finished: Mapping[str, Any]) -> dict[str, Any]:
        """Labels from the runs that finished ok; every other frame failed, with its reason."""
        results: dict[str, orm.Data] = {}
        failures: dict[str, dict[str, Any]] = {}
        for key, node in finished.items():
            if node.is_finished_ok and 'output_trajectory' in node.outputs:
                results[f'parameters_{key}'] = node.outputs.output_parameters
                results[f'trajectory_{key}'] = node.outputs.output_trajectory
            else:
                failures[key] = {
                    'exit_status': node.exit_status if node.exit_status is not None else -1,
                    'reason': failure_reason(node),
                }
        return assemble_qe_labels(self.state['frames'], orm.Dict(failures), **results)
