"""``aiida-trainspot run --dry-run``: every example validates, broken configs fail with the fix.

Real AiiDA profile, the codes of conftest.py under the labels the examples name
(``pw@localhost``, ``mace_run_train@localhost``, ...) and pseudo families made from Debian's UPF
files. The dry run must create no node: a check would be worthless if it spent the allocation.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml
from aiida import orm
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from click.testing import CliRunner

from aiida_trainspot.cli import cli
from aiida_trainspot.cli.campaign import build, read_run_config
from aiida_trainspot.cli.dry_run import validate_builder
from aiida_trainspot.data import PESData
from aiida_trainspot.data.convert import write_labelled_extxyz
from aiida_trainspot.exploration.plan import DEFAULT_PROTOCOL
from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family
from aiida_trainspot.workflows.inputs import campaign_species

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'
EXAMPLE_CONFIGS = sorted(EXAMPLES.glob('*/config.yaml'))
FAMILIES = {'trainspot-pbe-C': ('C',), 'trainspot-pbe-Si': ('Si',)}


@pytest.fixture
def example_codes(pw_code, mace_code, mtt_code, ase_md_code, evaluate_code):
    """The codes and pseudo families the example configs name (``aiida-trainspot setup``'s)."""
    for label, elements in FAMILIES.items():
        create_pseudo_family(label, elements)
    return {
        'pw': pw_code.full_label,
        'train': mace_code.full_label,
        'md': ase_md_code.full_label,
        'evaluate': evaluate_code.full_label,
    }


def _counts() -> tuple[int, int]:
    return (
        orm.QueryBuilder().append(orm.ProcessNode).count(),
        orm.QueryBuilder().append(orm.Node).count(),
    )


def _dry_run(path: Path):
    return CliRunner().invoke(cli, ['run', '--dry-run', str(path)])


def test_example_configs_exist():
    assert {path.parent.name for path in EXAMPLE_CONFIGS} >= {'carbon', 'silicon'}
    for path in EXAMPLE_CONFIGS:
        config = read_run_config(path)
        for structure in config.get('structures', []):
            assert Path(structure).is_file(), f'{path} names a missing {structure}'


@pytest.mark.parametrize('path', EXAMPLE_CONFIGS, ids=lambda path: path.parent.name)
def test_dry_run_of_every_example(example_codes, path):
    before = _counts()
    result = _dry_run(path)
    assert result.exit_code == 0, result.output
    assert _counts() == before, 'the dry run stored a node'
    lines = result.output.strip().splitlines()
    assert lines[-1] == 'dry run: OK, nothing submitted'
    builder = build(read_run_config(path))
    inputs = validate_builder(builder)
    family = orm.load_group(builder.labelling.qe.pseudo_family.value)
    species = campaign_species(inputs)
    assert species and set(species) <= set(family.elements)
    cutoffs = [family.get_recommended_cutoffs(elements=(s,), unit='Ry') for s in species]
    ecutwfc, ecutrho = (max(c[i] for c in cutoffs) for i in (0, 1))
    assert f'ecutwfc {ecutwfc:g} Ry, ecutrho {ecutrho:g} Ry' in result.output
    size = builder.training.committee_size.value
    assert f'{size} members' in result.output
    assert f'max_iterations   {builder.max_iterations.value}' in result.output
    assert f'{builder.exploration.n_structures.value} per iteration' in result.output
    md = {**DEFAULT_PROTOCOL, **builder.exploration.protocol.get_dict()}
    assert f'FIRE, at most {md["relax_steps"]} steps' in result.output
    assert f'{md["thermalisation_steps"]} thermalisation (never sampled)' in result.output
    for code in (builder.labelling.qe.code, builder.training.code, builder.exploration.code):
        assert code.full_label in result.output
    assert 'Traceback' not in result.output


def _carbon_config(tmp_path: Path, codes: dict, **changes) -> Path:
    """The carbon example with absolute structure paths, ``changes`` merged over it."""
    config = yaml.safe_load((EXAMPLES / 'carbon' / 'config.yaml').read_text())
    config['structures'] = [str(EXAMPLES / 'carbon' / name) for name in config['structures']]
    config['codes'] = dict(codes)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


def _silicon_carbide(tmp_path: Path) -> str:
    path = tmp_path / 'sic.xyz'
    write(path, bulk('SiC', 'zincblende', a=4.36), format='extxyz')
    return str(path)


def _labelled_frames(rng: np.random.Generator) -> list:
    frames = []
    for scale in (0.99, 1.0, 1.01):
        atoms = bulk('C', 'diamond', a=3.567 * scale)
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3))
        )
        frames.append(atoms)
    return frames


@pytest.mark.parametrize(
    ('change', 'expected'),
    [
        ({'overrides': {'max_iteratons': 3}}, "did you mean 'max_iterations'?"),
        (
            {'overrides': {'training': {'comittee_size': 8}}},
            "unknown key 'training.comittee_size'; did you mean 'training.committee_size'?",
        ),
        ({'codes': {'train': 'pw@localhost'}}, 'codes.train'),
        ({'protocol': 'moderat'}, "unknown protocol 'moderat'; did you mean 'moderate'?"),
        ({'overrides': {'labelling': {'qe': {'protocol': 'sloppy'}}}}, 'qe.protocol'),
        ({'pseudo_family': 'trainspot-pbe-Si'}, "has no pseudopotential for ['C']"),
        ({'structure': ['diamond.xyz']}, "did you mean 'structures'"),
        ({'max_iterations': 3}, 'go under `overrides:`'),
        ({'overrides': {'calibration': {'methd': 'huber'}}}, "did you mean 'method' for 'methd'"),
        (
            {'overrides': {'selection': {'min_distanc': 0.4}}},
            "selection: unknown keys ['min_distanc']; did you mean 'min_distance'",
        ),
        ({'overrides': {'error_thresholds': {'force': 0.1}}}, "did you mean 'forces'"),
        (
            {'overrides': {'augmentation': {'parameters': {'ratle': {}}}}},
            'unknown augmentation parameter',
        ),
        (
            {'overrides': {'training': {'parameters': {'mace': {'num_channel': 8}}}}},
            'unknown mace configuration keys',
        ),
    ],
    ids=lambda value: str(value)[:40],
)
def test_dry_run_names_the_problem(example_codes, tmp_path, change, expected):
    create_pseudo_family('trainspot-pbe-Si', ('Si',))
    codes = {**example_codes, **change.pop('codes', {})}
    path = _carbon_config(tmp_path, codes, **change)
    before = _counts()
    result = _dry_run(path)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert 'Traceback' not in result.output and 'nothing submitted' not in result.output
    assert _counts() == before


def test_dry_run_missing_species_of_structures(example_codes, tmp_path):
    """A SiC structure with a silicon-only family: the message names carbon and the port."""
    create_pseudo_family('trainspot-pbe-Si', ('Si',))
    structures = [_silicon_carbide(tmp_path)]
    path = _carbon_config(
        tmp_path, example_codes, structures=structures, pseudo_family='trainspot-pbe-Si'
    )
    result = _dry_run(path)
    assert result.exit_code == 1
    assert 'labelling.qe.pseudo_family' in result.output and "['C']" in result.output


def test_alloy_species_need_pseudos(example_codes, tmp_path):
    """Alloys bring species the structures lack: the family must cover them too."""
    create_pseudo_family('trainspot-pbe-Si', ('Si',))
    structure = tmp_path / 'si.xyz'
    write(structure, bulk('Si', 'diamond', a=5.43), format='extxyz')
    alloys = {'enabled': True, 'alloy_species': ['Si', 'Ge'], 'n_configs': 1}
    path = _carbon_config(
        tmp_path,
        example_codes,
        structures=[str(structure)],
        pseudo_family='trainspot-pbe-Si',
        overrides={'augmentation': {'parameters': {'alloys': alloys}}},
    )
    result = _dry_run(path)
    assert result.exit_code == 1
    assert "no pseudopotential for ['Ge']" in result.output


def test_labelled_structures_point_to_dataset(example_codes, tmp_path):
    frames = tmp_path / 'labelled.xyz'
    write(frames, _labelled_frames(np.random.default_rng(1)), format='extxyz')
    path = _carbon_config(tmp_path, example_codes, structures=[str(frames)])
    result = _dry_run(path)
    assert result.exit_code == 1
    assert 'labelled.xyz frame 0 carries labels' in result.output
    assert '`dataset:` key' in result.output


def test_validator_refuses_labelled_structures(example_codes, tmp_path):
    """The work chain's own validator, for a PESData set on the builder by hand."""
    builder = build(read_run_config(_carbon_config(tmp_path, example_codes)))
    builder.structures = PESData.from_ase(_labelled_frames(np.random.default_rng(2)))
    with pytest.raises(ValueError, match=r"structures: frame 0 carries labels \['energy', 'forc"):
        validate_builder(builder)


def test_dataset_key_keeps_labels(example_codes, tmp_path):
    rng = np.random.default_rng(5)
    frames = _labelled_frames(rng)
    write(tmp_path / 'plain.xyz', frames, format='extxyz')
    write_labelled_extxyz(frames[:1], tmp_path / 'exported.xyz')
    path = _carbon_config(tmp_path, example_codes, dataset=['plain.xyz', 'exported.xyz'])
    before = _counts()
    result = _dry_run(path)
    assert result.exit_code == 0, result.output
    assert _counts() == before
    n_frames = len(frames) + 1
    assert f'{n_frames} frames (C): energy {n_frames}, forces {n_frames}' in result.output
    assert 'never recomputed' in result.output
    dataset = build(read_run_config(path)).dataset
    energies, present = dataset.get_column('energy')
    assert present.all()
    expected = [atoms.get_potential_energy() for atoms in [*frames, frames[0]]]
    np.testing.assert_allclose(energies, expected, atol=1e-6)


def test_dataset_species_need_pseudos(example_codes, tmp_path):
    """Species of `dataset` count too: a silicon dataset beside carbon structures needs Si."""
    silicon = bulk('Si', 'diamond', a=5.43)
    silicon.calc = SinglePointCalculator(silicon, energy=-10.0, forces=np.zeros((2, 3)))
    write(tmp_path / 'si.xyz', silicon, format='extxyz')
    path = _carbon_config(tmp_path, example_codes, dataset=['si.xyz'])
    builder = build(read_run_config(path))
    inputs = {'structures': builder.structures, 'dataset': builder.dataset}
    assert campaign_species(inputs) == ['C', 'Si']  # by atomic number
    result = _dry_run(path)
    assert result.exit_code == 1
    assert "labelling.qe.pseudo_family: pseudopotential family 'trainspot-pbe-C' has no " in (
        result.output
    )
    assert "for ['Si']" in result.output
