"""``TrainsPotWorkChain.get_builder_from_protocol``: codes + structures + a protocol = a builder.

The protocol file (``aiida_trainspot/protocols/trainspot.yaml``) holds ``default_inputs`` and
the protocols ``fast``, ``moderate`` and ``precise``; the chosen protocol and then the user's
``overrides`` are merged over the defaults recursively (aiida-quantumespresso's
``ProtocolMixin``). Every value lands on the port of the same name, wrapped in the port's AiiDA
type; a key that names no port is warned about and ignored, never silently used.
``training.parameters`` and ``training.member_parameters`` hold one entry per training engine
(``{'mace': ..., 'metatrain': ...}``) and the builder takes the train code's; a key there that
is not an engine (MACE options without the ``mace:`` level) is refused with a ValueError.

The engines follow from the codes' plugins: ``pw`` (quantumespresso.pw) or ``ase_label``
(trainspot.ase.label) labels; ``train`` is a MACE (trainspot.mace.train) or metatrain
(trainspot.metatrain.train) code; ``md`` is ``trainspot.ase.md`` or ``lammps.raw``;
``evaluate`` is ``trainspot.evaluation``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiida import orm
from plumpy.ports import PortNamespace

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


def as_dataset(structures: Any) -> PESData:
    """A PESData from a PESData, ase.Atoms, StructureData or files ASE reads (or a list of them)."""
    if isinstance(structures, PESData):
        return structures
    if isinstance(structures, (str, Path, orm.StructureData)) or hasattr(structures, 'positions'):
        structures = [structures]
    frames = []
    for item in structures:
        if isinstance(item, orm.StructureData):
            frames.append(item.get_ase())
        elif isinstance(item, (str, Path)):
            from ase.io import read

            path = Path(item)
            if not path.is_file():
                raise ValueError(f'structures: no file {str(path)!r}')
            frames.extend(read(str(path), index=':'))
        elif hasattr(item, 'positions'):
            frames.append(item)
        else:
            raise ValueError(f'structures: cannot read a {type(item).__name__}')
    if not frames:
        raise ValueError('structures: no structure given')
    for atoms in frames:
        atoms.calc = None
        for key in [k for k, v in atoms.info.items() if isinstance(v, dict)]:
            del atoms.info[key]
    return PESData.from_ase(frames)


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
    """Set ``values`` on the ports of ``namespace``, recursively; warn about unknown keys."""
    for key, value in values.items():
        where = f'{path}{key}'
        if value is None:
            continue
        if key not in namespace:
            warnings.warn(f'protocol: unknown key {where!r} ignored', UserWarning, stacklevel=3)
            continue
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
    pseudo_family: str | None = None,
    ase_calculator: Mapping[str, Any] | None = None,
    ase_parameter_file: Any = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A ``TrainsPotWorkChain`` builder (see the module docstring).

    :param codes: ``{'pw' | 'ase_label': ..., 'train': ..., 'md': ..., 'evaluate': ...}``, codes
        or their labels.
    :param structures: what :func:`as_dataset` reads.
    :param protocol: ``fast``, ``moderate`` (default) or ``precise``.
    :param overrides: merged over the protocol, e.g. ``{'max_iterations': 3}``.
    :param pseudo_family: the aiida-pseudo family of the ``pw`` engine.
    :param ase_calculator: the calculator spec of the ``ase_label`` engine, e.g.
        ``{'name': 'emt'}``; ``ase_parameter_file`` its potential file (tersoff).
    :param options: ``metadata.options`` of every job (resources, walltime, queue, ...).
    """
    codes = load_codes(codes)
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
    builder.structures = as_dataset(structures)
    fill(builder, cls.spec().inputs, values)
    return builder


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


__all__ = ('as_dataset', 'builder_from_protocol', 'fill', 'load_codes')
