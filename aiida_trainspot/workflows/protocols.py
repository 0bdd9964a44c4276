"""``TrainsPotWorkChain.get_builder_from_protocol``: codes + structures + a protocol = a builder.

The protocol file (``aiida_trainspot/protocols/trainspot.yaml``) holds ``default_inputs`` and
the protocols ``fast``, ``moderate`` and ``precise``; the chosen protocol and then the user's
``overrides`` are merged over the defaults recursively (aiida-quantumespresso's
``ProtocolMixin``). Every value lands on the port of the same name, wrapped in the port's AiiDA
type; a key that names no port is an error naming the nearest port (a typo must not turn into a
default silently).
``training.parameters`` and ``training.member_parameters`` hold one entry per training engine
(``{'mace': ..., 'metatrain': ...}``) and the builder takes the train code's; a key there that
is not an engine (MACE options without the ``mace:`` level) is refused with a ValueError.

``structures`` are augmented and labelled with the campaign's DFT settings, so frames that carry
energies, forces or stresses are refused there: labelled frames go in ``dataset``, whose labels
are kept as given and never recomputed (they must come from the campaign's DFT settings, which
the package cannot check).

The engines follow from the codes' plugins: ``pw`` (quantumespresso.pw) or ``ase_label``
(trainspot.ase.label) labels; ``train`` is a MACE (trainspot.mace.train) or metatrain
(trainspot.metatrain.train) code; ``md`` is ``trainspot.ase.md`` or ``lammps.raw``;
``evaluate`` is ``trainspot.evaluation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiida import orm
from plumpy.ports import PortNamespace

from aiida_trainspot.common.settings import nearest_key
from aiida_trainspot.data import PESData

TRAINING_ENGINES = {'trainspot.mace.train': 'mace', 'trainspot.metatrain.train': 'metatrain'}
MD_ENGINES = {'trainspot.ase.md': 'ase', 'lammps.raw': 'lammps'}
LABELLING_CODES = {'pw': 'quantumespresso.pw', 'ase_label': 'trainspot.ase.label'}
CODE_KEYS = ('pw', 'ase_label', 'train', 'md', 'evaluate')
_WRAPPERS = (
    (orm.Bool, bool),
    (orm.Int, int),
    (orm.Float, float),
    (orm.Str, str),
    (orm.Dict, dict),
    (orm.List, list),
)


def _load_code(value: Any, key: str) -> orm.AbstractCode:
    if isinstance(value, orm.AbstractCode):
        return value
    try:
        return orm.load_code(value)
    except Exception as exception:
        raise ValueError(f'codes.{key}: no code {value!r} ({exception})') from exception


def _plugin(code: orm.AbstractCode) -> str:
    return code.default_calc_job_plugin or ''


def load_codes(codes: Mapping[str, Any]) -> dict[str, orm.AbstractCode]:
    """Codes by role; unknown roles and codes of the wrong plugin raise ValueError."""
    unknown = sorted(set(codes) - set(CODE_KEYS))
    if unknown:
        raise ValueError(f'codes: unknown keys {unknown}; known: {list(CODE_KEYS)}')
    loaded = {key: _load_code(value, key) for key, value in codes.items() if value is not None}
    for key in ('train', 'md', 'evaluate'):
        if key not in loaded:
            raise ValueError(f'codes.{key}: missing (training, MD and evaluation all need a code)')
    if not any(key in loaded for key in LABELLING_CODES):
        raise ValueError('codes: give `pw` (Quantum ESPRESSO) or `ase_label` to label frames')
    expected = {
        **LABELLING_CODES,
        'train': tuple(TRAINING_ENGINES),
        'md': tuple(MD_ENGINES),
        'evaluate': 'trainspot.evaluation',
    }
    for key, code in loaded.items():
        allowed = expected[key] if isinstance(expected[key], tuple) else (expected[key],)
        if _plugin(code) not in allowed:
            raise ValueError(
                f'codes.{key}: code {code.full_label} runs {_plugin(code)!r}, expected one of '
                f'{list(allowed)}'
            )
    return loaded


#: Names of labels in ``atoms.info`` / ``atoms.arrays`` (any case; also with a prefix ``X_``).
LABEL_NAMES = ('energy', 'free_energy', 'energies', 'forces', 'stress', 'stresses', 'virial')
#: Label keys written by ``aiida-trainspot export`` / ``data export`` (read by MACE, metatrain).
REF_KEYS = {'energy': 'REF_energy', 'forces': 'REF_forces', 'stress': 'REF_stress'}
DATASET_HINT = (
    "structures are augmented and labelled with the campaign's DFT settings; give labelled "
    'frames as `dataset` (Python) or the `dataset:` key of the run config: their labels are kept '
    'as given and never recomputed, so they must come from the same DFT settings as the campaign '
    '(the package cannot check that)'
)


def _is_label_key(key: str) -> bool:
    name = key.lower()
    return any(name == label or name.endswith(f'_{label}') for label in LABEL_NAMES)


def _results(atoms: Any) -> dict[str, Any]:
    return dict(getattr(atoms.calc, 'results', None) or {})


def frame_labels(atoms: Any) -> list[str]:
    """The labels a frame carries: calculator results and label-like ``info``/``arrays`` keys."""
    keys = [*_results(atoms), *atoms.info, *(k for k in atoms.arrays if k != 'positions')]
    return sorted({str(key) for key in keys if _is_label_key(str(key))})


def read_frames(items: Any, port: str) -> list[tuple[str, Any]]:
    """``(where, atoms)`` of every frame of ``items``: ase.Atoms, StructureData or files."""
    if isinstance(items, (str, Path, orm.StructureData)) or hasattr(items, 'positions'):
        items = [items]
    frames = []
    for position, item in enumerate(items):
        if isinstance(item, orm.StructureData):
            frames.append((f'{port}[{position}]', item.get_ase()))
        elif isinstance(item, (str, Path)):
            from ase.io import read

            path = Path(item)
            if not path.is_file():
                raise ValueError(f'{port}: no file {str(path)!r}')
            for index, atoms in enumerate(read(str(path), index=':')):
                frames.append((f'{path.name} frame {index}', atoms))
        elif hasattr(item, 'positions'):
            frames.append((f'{port}[{position}]', item))
        else:
            raise ValueError(f'{port}: cannot read a {type(item).__name__}')
    if not frames:
        raise ValueError(f'{port}: no structure given')
    return frames


def labelled_frame(dataset: PESData) -> tuple[int, list[str]] | None:
    """The first frame of ``dataset`` with an energy, forces or stress, and which; else None."""
    counts = dataset.base.attributes.get('n_labelled', {})
    names = [name for name in ('energy', 'forces', 'stress') if counts.get(name)]
    if not names:
        return None
    masks = {name: dataset.get_column(name)[1] for name in names}
    first = min(int(mask.argmax()) for mask in masks.values() if mask.any())
    return first, [name for name in names if masks[name][first]]


def as_dataset(structures: Any) -> PESData:
    """A PESData from a PESData, ase.Atoms, StructureData or files ASE reads (or a list of them).

    :raises ValueError: when a frame carries labels (see :data:`DATASET_HINT`): dropping them
        in silence would throw away the user's data, keeping them would mix DFT settings.
    """
    if isinstance(structures, PESData):
        labelled = labelled_frame(structures)
        if labelled is not None:
            index, names = labelled
            raise ValueError(f'structures: frame {index} carries labels {names}; {DATASET_HINT}')
        return structures
    frames = read_frames(structures, 'structures')
    for where, atoms in frames:
        labels = frame_labels(atoms)
        if labels:
            raise ValueError(f'structures: {where} carries labels {labels}; {DATASET_HINT}')
    frames = [atoms for _, atoms in frames]
    for atoms in frames:
        atoms.calc = None
    return PESData.from_ase(frames)


def read_dataset(dataset: Any) -> PESData:
    """A PESData keeping the labels of ``dataset`` (PESData, ase.Atoms, StructureData, files).

    Labels come from the calculator results ASE attaches (``energy=``, ``forces``, ``stress=``
    of an extxyz) or from the ``REF_`` keys that ``aiida-trainspot export`` writes; a frame with
    both is refused (which one is the label?). Frames without a ``generation_method`` get
    ``'user'``, so that the composition records tell them from the campaign's own.
    """
    if isinstance(dataset, PESData):
        return dataset
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for where, atoms in read_frames(dataset, 'dataset'):
        ref = {
            name: (atoms.arrays if name == 'forces' else atoms.info).pop(key)
            for name, key in REF_KEYS.items()
            if key in (atoms.arrays if name == 'forces' else atoms.info)
        }
        if ref and any(name in _results(atoms) for name in REF_KEYS):
            raise ValueError(
                f'dataset: {where} has labels both as {sorted(REF_KEYS[n] for n in ref)} and as '
                'calculator results; keep one of them'
            )
        if ref:
            atoms.calc = SinglePointCalculator(atoms, **ref)
        atoms.info.setdefault('generation_method', 'user')
        frames.append(atoms)
    return PESData.from_ase(frames)


def unknown_key_message(where: str, namespace: PortNamespace, path: str) -> str:
    """``overrides: unknown key 'x.y'; did you mean 'x.z'?`` (or the known keys)."""
    key = where.rsplit('.', 1)[-1]
    match = nearest_key(key, namespace)
    if match is None:  # a key given at the wrong level, e.g. `committee_size` for `training.`
        nested = [
            f'{name}.{key}'
            for name, port in sorted(namespace.items())
            if isinstance(port, PortNamespace) and key in port
        ]
        match = nested[0] if nested else None
    if match is None:
        return f'overrides: unknown key {where!r}; known: {sorted(namespace)}'
    return f'overrides: unknown key {where!r}; did you mean {path + match!r}?'


def _wrap(port: Any, value: Any, path: str) -> Any:
    valid = port.valid_type if isinstance(port.valid_type, tuple) else (port.valid_type,)
    if isinstance(value, orm.Data):
        return value
    for node_class, python_type in _WRAPPERS:
        if node_class in valid and isinstance(value, python_type):
            if node_class is orm.Float and isinstance(value, bool):
                continue
            return node_class(value)
    raise ValueError(f'{path}: cannot set a {type(value).__name__} on a port of {valid}')


def fill(builder: Any, namespace: PortNamespace, values: Mapping[str, Any], path: str = '') -> None:
    """Set ``values`` on the ports of ``namespace``, recursively.

    :raises ValueError: a key that names no port, with the nearest port (a typo in the
        overrides would otherwise leave the protocol's value in place unnoticed).
    """
    for key, value in values.items():
        where = f'{path}{key}'
        if value is None:
            continue
        if key not in namespace:
            raise ValueError(unknown_key_message(where, namespace, path))
        port = namespace[key]
        if isinstance(port, PortNamespace) and isinstance(value, Mapping) and len(port):
            fill(builder[key], port, value, f'{where}.')
        elif isinstance(port, PortNamespace) and isinstance(value, Mapping):
            builder[key] = dict(value)  # a namespace with no declared port, e.g. `models`
        else:
            builder[key] = _wrap(port, value, where)


def builder_from_protocol(
    cls: Any,
    codes: Mapping[str, Any],
    structures: Any,
    protocol: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    dataset: Any = None,
    pseudo_family: str | None = None,
    ase_calculator: Mapping[str, Any] | None = None,
    ase_parameter_file: Any = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A ``TrainsPotWorkChain`` builder (see the module docstring).

    :param codes: ``{'pw' | 'ase_label': ..., 'train': ..., 'md': ..., 'evaluate': ...}``, codes
        or their labels.
    :param structures: what :func:`as_dataset` reads (unlabelled frames); None with ``dataset``.
    :param dataset: frames whose labels are kept as given (:func:`read_dataset`): they must
        come from the campaign's DFT settings; unlabelled ones are labelled in iteration 1.
    :param protocol: ``fast``, ``moderate`` (default) or ``precise``.
    :param overrides: merged over the protocol, e.g. ``{'max_iterations': 3}``.
    :param pseudo_family: the aiida-pseudo family of the ``pw`` engine.
    :param ase_calculator: the calculator spec of the ``ase_label`` engine, e.g.
        ``{'name': 'emt'}``; ``ase_parameter_file`` its potential file (tersoff).
    :param options: ``metadata.options`` of every job (resources, walltime, queue, ...).
    """
    codes = load_codes(codes)
    if structures is None and dataset is None:
        raise ValueError('structures: give `structures` (augmented) and/or a `dataset`')
    _check_engine_overrides(overrides or {}, codes)
    available = list(cls.get_available_protocols())
    if protocol is not None and protocol not in available:
        match = nearest_key(protocol, available)
        hint = f'did you mean {match!r}? ' if match else ''
        raise ValueError(
            f'protocol: unknown protocol {protocol!r}; {hint}choose one of {available}'
        )
    values = cls.get_protocol_inputs(protocol, dict(overrides or {}))
    values.pop('description', None)
    engine = TRAINING_ENGINES[_plugin(codes['train'])]
    training = dict(values.get('training', {}))
    training['parameters'] = engine_entry(training, 'parameters', engine, {})
    members = engine_entry(training, 'member_parameters', engine, None)
    training.pop('member_parameters', None)
    if members is not None:
        training['member_parameters'] = members
    values['training'] = {**training, 'engine': engine, 'code': codes['train']}
    values['exploration'] = {
        **values.get('exploration', {}),
        'engine': MD_ENGINES[_plugin(codes['md'])],
        'code': codes['md'],
    }
    values['evaluation'] = {**values.get('evaluation', {}), 'code': codes['evaluate']}
    values['labelling'] = _labelling(
        dict(values.get('labelling', {})), codes, pseudo_family, ase_calculator, ase_parameter_file
    )
    if options:
        values['training']['options'] = dict(options)
        values['exploration']['options'] = dict(options)
        values['evaluation']['metadata'] = {'options': dict(options)}
        if values['labelling']['engine'] == 'qe':
            values['labelling']['qe']['options'] = dict(options)
        else:
            values['labelling']['ase']['metadata'] = {'options': dict(options)}
    builder = cls.get_builder()
    if structures is not None:
        builder.structures = as_dataset(structures)
    if dataset is not None:
        builder.dataset = read_dataset(dataset)
    fill(builder, cls.spec().inputs, values)
    return builder


def _check_engine_overrides(overrides: Mapping[str, Any], codes: Mapping[str, Any]) -> None:
    """Refuse overrides of the labelling engine the codes do not choose: they would be dropped."""
    labelling = overrides.get('labelling') or {}
    unused = 'ase' if 'pw' in codes else 'qe'
    if isinstance(labelling, Mapping) and labelling.get(unused):
        engine = 'qe (codes.pw)' if 'pw' in codes else 'ase (codes.ase_label)'
        raise ValueError(
            f'overrides: labelling.{unused} is not used: the codes choose the {engine} engine'
        )


def engine_entry(training: Mapping[str, Any], key: str, engine: str, default: Any) -> Any:
    """The training engine's entry of ``training[key]`` (``{'mace': ..., 'metatrain': ...}``).

    :raises ValueError: when ``training[key]`` holds keys that are not engine names, e.g. MACE
        options given without the ``mace:`` level: they would otherwise be dropped unseen.
    """
    entries = training.get(key) or {}
    if not isinstance(entries, Mapping):
        raise ValueError(
            f'training.{key}: give one entry per training engine, e.g. {{{engine!r}: ...}}; '
            f'got {type(entries).__name__}'
        )
    stray = sorted(set(entries) - set(TRAINING_ENGINES.values()))
    if stray:
        raise ValueError(
            f'training.{key}: {stray} are not training engines; give the options per engine, '
            f'e.g. {{{engine!r}: {{{stray[0]!r}: ...}}}}'
        )
    value = entries.get(engine)
    return default if value is None else value


def _labelling(
    values: dict[str, Any],
    codes: Mapping[str, orm.AbstractCode],
    pseudo_family: str | None,
    ase_calculator: Mapping[str, Any] | None,
    ase_parameter_file: Any,
) -> dict[str, Any]:
    if 'pw' in codes:
        if pseudo_family is None:
            raise ValueError(
                'pseudo_family: the pw labelling engine needs a pseudopotential family'
            )
        qe = {**values.get('qe', {}), 'code': codes['pw'], 'pseudo_family': pseudo_family}
        values.pop('ase', None)
        return {**values, 'engine': 'qe', 'qe': qe}
    if ase_calculator is None:
        raise ValueError("ase_calculator: the ase labelling engine needs e.g. {'name': 'emt'}")
    ase: dict[str, Any] = {**values.get('ase', {}), 'code': codes['ase_label']}
    ase['calculator'] = dict(ase_calculator)
    if ase_parameter_file is not None:
        if not isinstance(ase_parameter_file, orm.SinglefileData):
            ase_parameter_file = orm.SinglefileData(str(Path(ase_parameter_file).resolve()))
        ase['parameter_file'] = ase_parameter_file
    values.pop('qe', None)
    return {**values, 'engine': 'ase', 'ase': ase}


__all__ = (
    'as_dataset',
    'builder_from_protocol',
    'fill',
    'frame_labels',
    'load_codes',
    'read_dataset',
)
