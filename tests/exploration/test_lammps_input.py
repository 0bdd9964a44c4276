"""The pure core of the ``lammps`` exploration engine: types, boxes, pair styles, script, dumps.

The expected pair-style lines are written from the documentation of each pair style (cited next
to them), not from the code under test.
"""

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, diamond111, molecule

from aiida_trainspot.exploration import md
from aiida_trainspot.exploration.lammps import input as li

TERSOFF = {'kind': 'classical', 'pair_style': 'tersoff', 'file': 'SiC.tersoff'}
MD = {'temperature': 300.0, 'steps': 100, 'seed': 7}
# 1 J/mol = 1/96485.33212 eV (CODATA 2018 Faraday constant); 1 nm^6 = 1e6 Å^6
J_NM6_PER_MOL = 1e6 / 96485.33212


def assert_lines(actual, expected):
    """Same lines, token by token; numbers compared to 1e-12 relative."""
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected, strict=True):
        got_tokens, want_tokens = got.split(), want.split()
        assert len(got_tokens) == len(want_tokens), (got, want)
        for a, b in zip(got_tokens, want_tokens, strict=True):
            try:
                fa, fb = float(a), float(b)
            except ValueError:
                assert a == b, (got, want)
            else:
                assert fa == pytest.approx(fb, rel=1e-12, abs=1e-14), (got, want)


def script_lines(script, prefix):
    return [line for line in script.splitlines() if line.startswith(prefix)]


def sic_orders():
    sic = bulk('SiC', 'zincblende', a=4.36, cubic=True)
    symbols = np.array(sic.get_chemical_symbols())
    c_first = sic[np.argsort(symbols == 'Si', kind='stable')]
    si_first = sic[np.argsort(symbols == 'C', kind='stable')]
    return c_first, si_first


def rotated_hexagonal():
    """Wurtzite SiC (hexagonal, 4 atoms) turned away from LAMMPS' orientation, 2x2x1."""
    atoms = bulk('SiC', 'wurtzite', a=3.08, c=5.04).repeat((2, 2, 1))
    atoms.rotate(30, 'z', rotate_cell=True)
    atoms.rotate(17, 'x', rotate_cell=True)
    atoms.rotate(-40, 'y', rotate_cell=True)
    atoms.wrap()
    return atoms


def read_data_atoms(text):
    """(types, positions, (bounds, tilts)) of a data file written by data_file()."""
    lines = text.splitlines()
    bounds = [tuple(map(float, lines[i].split()[:2])) for i in (5, 6, 7)]
    tilts = tuple(map(float, lines[8].split()[:3]))
    start = lines.index('Atoms  # atomic') + 2
    rows = [line.split() for line in lines[start:] if line.strip()]
    ids = [int(r[0]) for r in rows]
    assert ids == list(range(1, len(rows) + 1))
    types = np.array([int(r[1]) for r in rows])
    positions = np.array([[float(v) for v in r[2:5]] for r in rows])
    return types, positions, bounds, tilts


def lammps_cell(bounds, tilts):
    (xlo, xhi), (ylo, yhi), (zlo, zhi) = bounds
    xy, xz, yz = tilts
    return np.array([[xhi - xlo, 0, 0], [xy, yhi - ylo, 0], [xz, yz, zhi - zlo]])


def fake_dump(frames, species):
    """A dump in LAMMPS' format: [(step, lammps_cell, origin, types, positions)]."""
    out = []
    for step, cell, origin, types, positions in frames:
        (lx, _, _), (xy, ly, _), (xz, yz, lz) = np.asarray(cell, dtype=float).tolist()
        xlo, ylo, zlo = np.asarray(origin, dtype=float).tolist()
        low_x, high_x = min(0, xy, xz, xy + xz), max(0, xy, xz, xy + xz)
        out += ['ITEM: TIMESTEP', str(step), 'ITEM: NUMBER OF ATOMS', str(len(types))]
        out.append('ITEM: BOX BOUNDS xy xz yz pp pp pp')
        out.append(f'{xlo + low_x!r} {xlo + lx + high_x!r} {xy!r}')
        out.append(f'{ylo + min(0, yz)!r} {ylo + ly + max(0, yz)!r} {xz!r}')
        out.append(f'{zlo!r} {zlo + lz!r} {yz!r}')
        out.append('ITEM: ATOMS id type element x y z')
        order = np.arange(len(types))[::-1]  # LAMMPS may write in any order without sort
        for i in order:
            x, y, z = np.asarray(positions[i], dtype=float).tolist()
            out.append(f'{i + 1} {types[i]} {species[types[i] - 1]} {x!r} {y!r} {z!r}')
    return '\n'.join(out) + '\n'


def minimum_image_difference(a, b, cell, pbc):
    delta = np.linalg.solve(np.asarray(cell).T, (a - b).T).T
    delta[:, pbc] -= np.round(delta[:, pbc])
    return np.abs(delta @ np.asarray(cell)).max()


# --------------------------------------------------------------------------- types


def test_species_are_ordered_by_atomic_number_whatever_the_input_order():
    assert li.lammps_species(['Si', 'C', 'Si']) == ['C', 'Si']
    assert li.lammps_species(['C', 'Si']) == ['C', 'Si']
    assert li.lammps_species(['O', 'H', 'C', 'H']) == ['H', 'C', 'O']
    assert li.lammps_species(['W', 'Te', 'Mo']) == ['Mo', 'Te', 'W']
    with pytest.raises(li.LammpsInputError, match='unknown chemical symbols'):
        li.lammps_species(['C', 'Xx'])


def test_data_file_types_follow_the_mapping_for_either_species_order():
    c_first, si_first = sic_orders()
    assert c_first.get_chemical_symbols()[:4] == ['C'] * 4
    assert si_first.get_chemical_symbols()[:4] == ['Si'] * 4
    for atoms in (c_first, si_first):
        species = li.lammps_species(atoms.get_chemical_symbols())
        assert species == ['C', 'Si']
        text, box = li.data_file(atoms, species)
        types, positions, _, _ = read_data_atoms(text)
        # atom i has id i + 1 and the type of its own element
        expected = [1 if s == 'C' else 2 for s in atoms.get_chemical_symbols()]
        np.testing.assert_array_equal(types, expected)
        assert '1 12.011  # C' in text
        assert '2 28.085  # Si' in text
        assert '2 atom types' in text
        # a cubic cell: no rotation, positions unchanged
        np.testing.assert_allclose(box.rotation, np.eye(3), atol=1e-15)
        np.testing.assert_allclose(positions, atoms.positions, atol=1e-12)
    # a model's species fix the types even when the structure lacks some
    text, _ = li.data_file(bulk('C', 'diamond', a=3.567), ['H', 'C', 'O'])
    assert '3 atom types' in text
    assert set(read_data_atoms(text)[0]) == {2}
    with pytest.raises(li.LammpsInputError, match='have no LAMMPS type'):
        li.data_file(c_first, ['C'])
    with pytest.raises(li.LammpsInputError, match='not a lammps_species'):
        li.data_file(c_first, ['Si', 'C'])


def test_seed_maps_to_a_valid_lammps_seed():
    assert li.lammps_seed(7) == 7
    assert li.lammps_seed(0) == li.lammps_seed(0) >= 1
    for seed in (0, -5, 2**40, li.MAX_LAMMPS_SEED):
        assert 1 <= li.lammps_seed(seed) < li.MAX_LAMMPS_SEED


# --------------------------------------------------------------------------- geometry


def test_triclinic_cell_is_rotated_into_lammps_and_back():
    atoms = rotated_hexagonal()
    species = li.lammps_species(atoms.get_chemical_symbols())
    text, box = li.data_file(atoms, species)
    types, positions, bounds, tilts = read_data_atoms(text)
    cell = lammps_cell(bounds, tilts)
    # LAMMPS' orientation: a along x, b in the xy plane, positive diagonal, small tilts
    assert np.allclose(box.rotation @ box.rotation.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(box.rotation) - 1) < 1e-12
    assert (np.diag(cell) > 0).all()
    assert abs(tilts[0]) <= 0.5 * cell[0, 0] + 1e-9
    assert abs(tilts[1]) <= 0.5 * cell[0, 0] + 1e-9
    assert abs(tilts[2]) <= 0.5 * cell[1, 1] + 1e-9
    # the same lattice: volume, and the rotated cell is the written one up to tilt reduction
    assert np.linalg.det(cell) == pytest.approx(atoms.cell.volume, rel=1e-12)
    combination = np.round(cell @ np.linalg.inv(atoms.cell.array @ box.rotation))
    np.testing.assert_allclose(combination @ atoms.cell.array @ box.rotation, cell, atol=1e-10)
    # distances are preserved atom by atom
    original = atoms.get_all_distances(mic=True)
    lammps_atoms = Atoms(numbers=atoms.numbers, positions=positions, cell=cell, pbc=True)
    np.testing.assert_allclose(lammps_atoms.get_all_distances(mic=True), original, atol=1e-10)
    # a dump of the written box comes back in the original orientation and basis
    dump = fake_dump([(0, cell, (0, 0, 0), types, positions)], species)
    (frame,) = li.parse_dump(dump, box, species)
    assert frame.step == 0
    np.testing.assert_array_equal(frame.numbers, atoms.numbers)
    np.testing.assert_allclose(frame.cell, atoms.cell.array, atol=1e-10)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-10)


def test_box_flips_and_strain_are_undone_back_to_the_structure_basis():
    atoms = rotated_hexagonal()
    species = ['C', 'Si']
    text, box = li.data_file(atoms, species)
    types, positions, bounds, tilts = read_data_atoms(text)
    cell = lammps_cell(bounds, tilts)
    strain = np.array([[1.02, 0.0, 0.0], [0.01, 0.99, 0.0], [0.0, 0.02, 1.03]])
    strained = cell @ strain
    flipped = strained.copy()
    flipped[1] -= strained[0]  # what LAMMPS does when xy passes half of lx: b -> b - a
    frames = [
        (100, strained, (0, 0, 0), types, positions @ strain),
        (200, flipped, (0, 0, 0), types, positions @ strain),
    ]
    first, second = li.parse_dump(fake_dump(frames, species), box, species)
    # both frames give the same basis, the structure's own strained by the same deformation
    np.testing.assert_allclose(first.cell, second.cell, atol=1e-10)
    deformation = box.rotation @ strain @ box.rotation.T
    np.testing.assert_allclose(first.cell, atoms.cell.array @ deformation, atol=1e-10)
    expected = atoms.positions @ deformation
    assert minimum_image_difference(second.positions, expected, second.cell, [True] * 3) < 1e-9


@pytest.mark.parametrize(
    ('pbc', 'boundary'),
    [((True, True, False), 'p p m'), ((False, False, True), 'm m p'), ((False,) * 3, 'm m m')],
)
def test_non_periodic_axes_are_shrink_wrapped_and_keep_their_cell_vector(pbc, boundary):
    atoms = diamond111('C', size=(2, 2, 4), vacuum=5.0)
    atoms.cell[2] = [1.0, 0.5, atoms.cell[2, 2]]  # a tilted vacuum axis
    atoms.pbc = pbc
    if not any(pbc):
        atoms = molecule('CH3CH2OH')  # a molecule with no cell at all
    species = li.lammps_species(atoms.get_chemical_symbols())
    text, box = li.data_file(atoms, species)
    assert box.boundary() == boundary
    types, positions, bounds, tilts = read_data_atoms(text)
    cell = lammps_cell(bounds, tilts)
    # LAMMPS allows tilts only into periodic axes
    xy, xz, yz = tilts
    if not pbc[1]:
        assert xy == 0
    if not pbc[2]:
        assert xz == yz == 0
    # every atom lies inside the written box
    origin = np.array([low for low, _ in bounds])
    fractional = np.linalg.solve(cell.T, (positions - origin).T).T
    assert (fractional >= -1e-12).all()
    assert (fractional <= 1 + 1e-12).all()
    # back: the structure's cell for non-periodic axes, positions where they were
    dump = fake_dump([(10, cell, origin, types, positions)], species)
    (frame,) = li.parse_dump(dump, box, species)
    np.testing.assert_allclose(frame.cell, atoms.cell.array, atol=1e-10)
    assert frame.pbc == tuple(pbc)
    assert minimum_image_difference(frame.positions, atoms.positions, box.full_cell, pbc) < 1e-10


def test_box_round_trips_through_json():
    atoms = rotated_hexagonal()
    _, box = li.data_file(atoms, ['C', 'Si'])
    again = li.LammpsBox.from_dict(box.to_dict())
    for name in ('rotation', 'cell', 'full_cell', 'periodic_basis', 'lammps_cell', 'origin'):
        np.testing.assert_array_equal(getattr(again, name), getattr(box, name))
    assert again.pbc == box.pbc


def test_dump_with_elements_that_disagree_with_the_types_is_refused():
    atoms = bulk('SiC', 'zincblende', a=4.36)
    text, box = li.data_file(atoms, ['C', 'Si'])
    types, positions, bounds, tilts = read_data_atoms(text)
    dump = fake_dump([(0, lammps_cell(bounds, tilts), (0, 0, 0), types, positions)], ['Si', 'C'])
    with pytest.raises(ValueError, match='elements disagree'):
        li.parse_dump(dump, box, ['C', 'Si'])


# --------------------------------------------------------------------------- pair styles


def test_classical_tersoff_lines():
    # LAMMPS docs, pair_style tersoff, Examples: "pair_style tersoff" and
    # "pair_coeff * * SiC.tersoff Si C Si": one element of the file per type, in type order
    assert li.pair_commands(TERSOFF, ['C', 'Si']) == [
        'pair_style tersoff',
        'pair_coeff * * SiC.tersoff C Si',
    ]
    airebo = {'kind': 'classical', 'pair_style': 'airebo 3.0 1 1', 'file': 'CH.airebo'}
    # LAMMPS docs, pair_style airebo: "pair_style airebo 3.0 1 1", "pair_coeff * * CH.airebo C H"
    assert li.pair_commands(airebo, ['H', 'C']) == [
        'pair_style airebo 3.0 1 1',
        'pair_coeff * * CH.airebo H C',
    ]


def test_mace_lines_on_three_species():
    species = li.lammps_species(['O', 'C', 'H'])
    assert species == ['H', 'C', 'O']
    script = li.md_script(
        species=species,
        pbc=(True,) * 3,
        potential={'kind': 'mace', 'file': 'model.model-lammps.pt'},
        **MD,
    )
    # MACE docs, "MACE in LAMMPS" (docs/guide/lammps.rst), "Using the model in LAMMPS":
    #   "Add the following after your atom_style command: atom_modify map yes / newton on"
    #   "pair_style mace no_domain_decomposition"
    #   "pair_coeff * * my_mace.model-lammps.pt C H N O" (elements in LAMMPS type order)
    lines = script.splitlines()
    at = lines.index('atom_style atomic')
    assert lines[at + 1 : at + 3] == ['atom_modify map yes', 'newton on']
    assert_lines(
        script_lines(script, 'pair_'),
        ['pair_style mace no_domain_decomposition', 'pair_coeff * * model.model-lammps.pt H C O'],
    )
    # with several MPI ranks, the plain style (same page, "Instructions for CPU")
    assert li.pair_commands(
        {'kind': 'mace', 'file': 'm.pt', 'domain_decomposition': True}, species
    ) == ['pair_style mace', 'pair_coeff * * m.pt H C O']


def test_metatomic_lines_on_three_species():
    species = li.lammps_species(['O', 'C', 'H'])
    potential = {
        'kind': 'metatomic',
        'file': 'model.pt',
        'device': 'cpu',
        'extensions': 'extensions',
    }
    # metatomic docs, engines/lammps ("pair_style metatomic", Syntax and Examples):
    #   "pair_style metatomic model_path ... keyword values ..." with keywords
    #   "device values = device_name" and "extensions values = directory", e.g.
    #   "pair_style metatomic exported-model.pt device cuda extensions /home/user/torch-extensions/"
    #   "pair_coeff * * 6 8 1": after "* *", one atomic type (atomic number) per LAMMPS type
    assert_lines(
        li.pair_commands(potential, species),
        ['pair_style metatomic model.pt device cpu extensions extensions', 'pair_coeff * * 1 6 8'],
    )
    assert li.pair_commands({'kind': 'metatomic', 'file': 'model.pt'}, ['Mo', 'Te', 'W']) == [
        'pair_style metatomic model.pt',
        'pair_coeff * * 42 52 74',
    ]


def d2_expected(species):
    """Grimme (2006) Table 1 values of H, C, O, typed in by hand; the paper's combination rules."""
    table = {'H': (0.14, 1.001), 'C': (1.75, 1.452), 'O': (0.70, 1.342)}  # J nm^6/mol, Å
    lines = []
    for i, a in enumerate(species, start=1):
        for j in range(i, len(species) + 1):
            b = species[j - 1]
            c6 = math.sqrt(table[a][0] * table[b][0]) * J_NM6_PER_MOL
            rr = table[a][1] + table[b][1]
            # LAMMPS docs, pair_style momb, Examples: "pair_coeff 1 2 momb 0.0 1.0 1.0 10.2847
            # 2.361" = D0 alpha r0 C6 Rr; D0 = 0 leaves only -s6 C6/r^6 f_damp(r, Rr)
            lines.append(f'pair_coeff {i} {j} momb 0.0 1.0 1.0 {c6!r} {rr!r}')
    return lines


def test_d2_lines_on_three_species_with_each_main_style():
    species = li.lammps_species(['O', 'H', 'C'])
    d2 = {}  # the defaults: PBE's s6 = 0.75, d = 20, 15 Å cutoff
    # LAMMPS docs, pair_style momb, Syntax "pair_style momb cutoff s6 d" and Examples
    # "pair_style hybrid/overlay eam/fs lj/charmm/coul/long 10.0 12.0 momb 12.0 0.75 20.0 ...":
    # the main style, then momb with its three settings; pair_coeff of hybrid styles name the
    # sub-style after I J (LAMMPS docs, pair_style hybrid)
    cases = {
        'mace': (
            {'kind': 'mace', 'file': 'model.model-lammps.pt', 'dispersion': d2},
            'pair_style hybrid/overlay mace no_domain_decomposition momb 15.0 0.75 20.0',
            'pair_coeff * * mace model.model-lammps.pt H C O',
        ),
        'metatomic': (
            {'kind': 'metatomic', 'file': 'model.pt', 'device': 'cpu', 'dispersion': d2},
            # metatomic docs, Examples: "pair_coeff * * metatomic_1 6 17 1 7" under hybrid/overlay
            'pair_style hybrid/overlay metatomic model.pt device cpu momb 15.0 0.75 20.0',
            'pair_coeff * * metatomic 1 6 8',
        ),
        'classical': (
            {**TERSOFF, 'file': 'HCO.tersoff', 'dispersion': d2},
            'pair_style hybrid/overlay tersoff momb 15.0 0.75 20.0',
            'pair_coeff * * tersoff HCO.tersoff H C O',
        ),
    }
    for potential, style, main in cases.values():
        lines = li.pair_commands(potential, species)
        assert_lines(lines, [style, main, *d2_expected(species)])
        # every type pair i <= j has its D2 coefficients, once
        pairs = [tuple(map(int, line.split()[1:3])) for line in lines if ' momb 0.0' in line]
        assert sorted(pairs) == [(i, j) for i in (1, 2, 3) for j in (1, 2, 3) if i <= j]
    custom = li.pair_commands(
        {**TERSOFF, 'dispersion': {'s6': 1.0, 'd': 23.0, 'cutoff': 12.0}}, ['C']
    )
    assert custom[0] == 'pair_style hybrid/overlay tersoff momb 12 1 23'


def test_d2_parameters_and_their_limits():
    c6, r0 = li.d2_coefficients('C')
    assert c6 == pytest.approx(1.75 * J_NM6_PER_MOL, rel=1e-9)
    assert r0 == 1.452
    assert li.d2_coefficients('Si') == (pytest.approx(9.23 * J_NM6_PER_MOL, rel=1e-9), 1.716)
    assert li.d2_coefficients('Xe')[1] == 1.881
    with pytest.raises(li.LammpsInputError, match='no parameters for W'):
        li.d2_coefficients('W')
    assert li.d2_coefficients('W', {'W': (500.0, 1.8)}) == (500.0, 1.8)
    (pair,) = li.d2_pair_coefficients(['W'], {'W': (500.0, 1.8)})
    assert pair == (1, 1, 500.0, 3.6)


def test_potential_specs_are_checked():
    with pytest.raises(li.LammpsInputError, match='kind'):
        li.pair_commands({'kind': 'deepmd'}, ['C'])
    with pytest.raises(li.LammpsInputError, match='unknown keys'):
        li.pair_commands({'kind': 'mace', 'file': 'm.pt', 'device': 'cpu'}, ['C'])
    with pytest.raises(li.LammpsInputError, match='model `file`'):
        li.pair_commands({'kind': 'metatomic'}, ['C'])
    with pytest.raises(li.LammpsInputError, match='without blanks'):
        li.pair_commands({'kind': 'mace', 'file': 'my model.pt'}, ['C'])


# --------------------------------------------------------------------------- the MD script


def test_script_of_a_periodic_npt_run():
    script = li.md_script(
        species=['C', 'Si'],
        pbc=(True, True, True),
        potential=TERSOFF,
        temperature=1200.0,
        steps=5000,
        seed=42,
        pressure=10.0,
        timestep_fs=0.5,
        sample_interval=25,
    )
    lines = script.splitlines()
    assert lines[1:7] == [
        'units metal',
        'atom_style atomic',
        'atom_modify map yes',
        'newton on',
        'boundary p p p',
        'read_data structure.data',
    ]
    assert 'timestep 0.0005' in lines
    assert 'velocity all create 1200 42 mom yes rot no dist gaussian loop all' in lines
    # damping: 100 and 1000 steps, in ps
    assert 'fix md all npt temp 1200 1200 0.05 aniso 10 10 0.5' in lines
    assert 'dump trajectory all custom 25 trajectory.dump id type element x y z' in lines
    assert 'dump_modify trajectory sort id element C Si format float %.16g' in lines
    assert 'thermo 25' in lines
    assert script_lines(script, 'fix samples') == [
        'fix samples all print 25 "${sample_step} ${sample_temp} ${sample_press} ${sample_pe}" '
        'file samples.dat screen no title "# step temp press pe"'
    ]
    assert script.endswith('\n\nrun 5000\n')
    assert 'halt' not in script


@pytest.mark.parametrize(
    ('pbc', 'mode', 'expected'),
    [
        ((True,) * 3, 'iso', 'iso 0 0 1'),
        ((True,) * 3, 'tri', 'tri 0 0 1'),
        ((True, True, False), 'aniso', 'x 0 0 1 y 0 0 1'),
        ((True, True, False), 'iso', 'x 0 0 1 y 0 0 1 couple xy'),
        ((True, True, False), 'tri', 'x 0 0 1 y 0 0 1 xy 0 0 1'),
        ((False, True, True), 'tri', 'y 0 0 1 z 0 0 1 yz 0 0 1'),
        ((False, False, True), 'iso', 'z 0 0 1'),
    ],
)
def test_npt_barostats_only_periodic_axes(pbc, mode, expected):
    script = li.md_script(
        species=['C'], pbc=pbc, potential=TERSOFF, barostat=mode, ensemble='npt', **MD
    )
    (fix,) = script_lines(script, 'fix md ')
    assert fix == f'fix md all npt temp 300 300 0.1 {expected}'
    for axis, periodic in zip('xyz', pbc, strict=True):
        assert (f' {axis} 0 0 1' in fix) == (periodic and not all(pbc))
    boundary = ' '.join('p' if p else 'm' for p in pbc)
    assert f'boundary {boundary}' in script


def test_nvt_when_no_axis_is_periodic_and_on_request():
    script = li.md_script(species=['C'], pbc=(False,) * 3, potential=TERSOFF, **MD)
    assert script_lines(script, 'fix md ') == ['fix md all nvt temp 300 300 0.1']
    # a molecule: zero angular momentum as well
    assert 'velocity all create 300 7 mom yes rot yes dist gaussian loop all' in script
    assert 'boundary m m m' in script
    nvt = li.md_script(species=['C'], pbc=(True,) * 3, potential=TERSOFF, ensemble='nvt', **MD)
    assert script_lines(nvt, 'fix md ') == ['fix md all nvt temp 300 300 0.1']
    nve = li.md_script(species=['C'], pbc=(True,) * 3, potential=TERSOFF, ensemble='nve', **MD)
    assert script_lines(nve, 'fix md ') == ['fix md all nve']
    with pytest.raises(li.LammpsInputError, match='ensemble'):
        li.md_script(species=['C'], pbc=(True,) * 3, potential=TERSOFF, ensemble='npH', **MD)


def test_same_seed_same_velocity_line():
    def velocity(seed):
        script = li.md_script(
            species=['C'], pbc=(True,) * 3, potential=TERSOFF, **{**MD, 'seed': seed}
        )
        (line,) = script_lines(script, 'velocity ')
        return line

    assert velocity(11) == velocity(11)
    assert velocity(11) != velocity(12)
    assert velocity(11).split()[4] == '11'


def test_abort_rules():
    script = li.md_script(
        species=['C'],
        pbc=(True,) * 3,
        potential=TERSOFF,
        max_temperature=5000.0,
        min_distance=0.7,
        max_force=50.0,
        sample_interval=20,
        **MD,
    )
    # LAMMPS docs, fix halt: "fix ID group-ID halt N attribute operator avalue keyword value",
    # attribute v_name, keyword "error soft" stops the run and goes on with the script; N = 1:
    # after every step, as the ase engine checks
    assert script_lines(script, 'fix halt') == [
        'fix halt_temperature all halt 1 v_halt_temperature > 5000 error soft',
        'fix halt_distance all halt 1 v_halt_distance < 0.7 error soft',
        'fix halt_force all halt 1 v_halt_force > 50 error soft',
    ]
    assert 'compute pair_distances all pair/local dist' in script
    assert 'compute min_distance all reduce min c_pair_distances' in script
    # LAMMPS docs, variable: atom-style variables of fx, fy, fz; compute reduce max of it
    assert 'variable force_norm atom sqrt(fx*fx+fy*fy+fz*fz)' in script
    assert 'compute max_force all reduce max v_force_norm' in script
    log = 'blah\nFix halt condition for fix-id halt_distance met on step 40 with value 0.65 (x)\n'
    assert li.parse_halt(log) == {
        'fix': 'halt_distance',
        'reason': 'min_distance',
        'step': 40,
        'value': 0.65,
    }
    assert li.parse_halt('Total wall time: 0:00:01') is None
    log = 'Fix halt condition for fix-id halt_force met on step 3 with value 61.5 (x)'
    assert li.parse_halt(log)['reason'] == 'max_force'


def test_phases_relaxation_thermalisation_production():
    script = li.md_script(
        species=['C'],
        pbc=(True,) * 3,
        potential=TERSOFF,
        relax_steps=80,
        relax_fmax=0.05,
        thermalisation_steps=200,
        max_temperature=1500.0,
        **MD,
    )
    lines = script.splitlines()
    # LAMMPS docs: min_style fire; min_modify norm max (largest force on an atom, as ASE's
    # fmax) dmax (largest move per step); minimize etol ftol maxiter maxeval
    relaxation = ['min_style fire', 'min_modify norm max dmax 0.1', 'minimize 0 0.05 80 800']
    start = lines.index('min_style fire')
    assert lines[start : start + 4] == [*relaxation, 'reset_timestep 0']
    assert li.RELAX_MAX_STEP == md.RELAX_MAX_STEP  # the same FIRE step bound as the ase engine
    # order: relaxation, velocities, thermostat, thermalisation (nothing dumped, no halt), then
    # the production from step 0 with its dump, samples and halts
    order = [
        'minimize ',
        'velocity all create',
        'fix md ',
        'run 200',
        'reset_timestep 0',
        'fix samples ',
        'dump trajectory ',
        'fix halt_temperature ',
        'run 100',
    ]
    position = start
    for prefix in order:  # each after the one before
        position = next(i for i in range(position + 1, len(lines)) if lines[i].startswith(prefix))
    sampled_or_checked = [i for i, line in enumerate(lines) if 'dump' in line or 'halt' in line]
    assert min(sampled_or_checked) > lines.index('run 200')
    # without relaxation and thermalisation, neither appears
    plain = li.md_script(species=['C'], pbc=(True,) * 3, potential=TERSOFF, **MD)
    assert 'minimize' not in plain and 'reset_timestep' not in plain
    assert script_lines(plain, 'run ') == ['run 100']
    for bad in ({'relax_steps': -1}, {'thermalisation_steps': -5}, {'relax_fmax': 0.0}):
        with pytest.raises(li.LammpsInputError, match='relax'):
            li.md_script(species=['C'], pbc=(True,) * 3, potential=TERSOFF, **MD, **bad)


def test_samples_are_parsed():
    text = '# step temp press pe\n0 300 12.5 -10.0\n20 310.5 -3.25 -9.5\n'
    assert li.parse_samples(text) == {
        0: {'temperature': 300.0, 'pressure': 12.5, 'potential_energy': -10.0},
        20: {'temperature': 310.5, 'pressure': -3.25, 'potential_energy': -9.5},
    }


def test_prepare_run_and_records_from_outputs():
    atoms = rotated_hexagonal()
    md = {**MD, 'sample_interval': 50, 'ensemble': 'npt', 'pressure': 5.0, 'timestep_fs': 2.0}
    run = li.prepare_run(atoms, TERSOFF, md, run_id='r3', source_frame=12)
    assert run.conversion['species'] == ['C', 'Si']
    assert run.conversion['ensemble'] == 'npt'
    types, positions, bounds, tilts = read_data_atoms(run.data)
    cell = lammps_cell(bounds, tilts)
    frames = [(step, cell, (0, 0, 0), types, positions) for step in (0, 50, 100)]
    dump = fake_dump(frames, ['C', 'Si'])
    samples = '# step temp press pe\n0 300 1 -5\n50 320 2 -5\n100 330 3 -5\n'
    records, summary = li.trajectory_records(dump, samples, '', run.conversion)
    assert [r['info']['step'] for r in records] == [50, 100]
    first = records[0]
    assert first['info'] == {
        'engine': 'lammps',
        'run_id': 'r3',
        'source_frame': 12,
        'ensemble': 'npt',
        'temperature': 300.0,
        'pressure': 5.0,
        'step': 50,
        'time_fs': 100.0,
        'md_temperature': 320.0,
        'md_pressure': 2.0,
    }
    np.testing.assert_array_equal(first['numbers'], atoms.numbers)
    np.testing.assert_allclose(first['positions'], atoms.positions, atol=1e-10)
    assert summary == {
        'run_id': 'r3',
        'source_frame': 12,
        'n_frames': 2,
        'last_step': 100,
        'thermalisation_steps': 0,
        'steps': 100,
        'halted': False,
        'halt': None,
    }
    # after a thermalisation the production counts from 0 in LAMMPS: steps come back from the
    # start of the MD, as the ase engine counts them (the dump starts at the production)
    warm = li.prepare_run(atoms, TERSOFF, {**md, 'thermalisation_steps': 30}, run_id='r3')
    assert warm.conversion['thermalisation_steps'] == 30
    log = 'Fix halt condition for fix-id halt_distance met on step 100 with value 0.4 (x)'
    records, summary = li.trajectory_records(dump, samples, log, warm.conversion)
    assert [r['info']['step'] for r in records] == [80]
    assert records[0]['info']['time_fs'] == 160.0
    assert records[0]['info']['md_temperature'] == 320.0  # the samples of production step 50
    assert summary['halt']['step'] == 130
    assert (summary['last_step'], summary['steps'], summary['thermalisation_steps']) == (
        130,
        130,
        30,
    )
    # a halt drops the frame of its step; NVT has no target pressure
    run = li.prepare_run(atoms, TERSOFF, {**md, 'ensemble': 'nvt'}, include_initial=True)
    log = 'Fix halt condition for fix-id halt_temperature met on step 100 with value 9000.0 (x)'
    records, summary = li.trajectory_records(dump, samples, log, run.conversion)
    assert [r['info']['step'] for r in records] == [0, 50]
    assert 'pressure' not in records[0]['info']
    assert summary['halted'] is True
    assert summary['halt']['reason'] == 'max_temperature'
    # a dump whose elements are not the structure's is refused
    other = atoms.copy()
    other.numbers = other.numbers[::-1]
    wrong = li.prepare_run(other, TERSOFF, md)
    with pytest.raises(ValueError, match='not those of the structure'):
        li.trajectory_records(dump, samples, '', wrong.conversion)
    with pytest.raises(li.LammpsInputError, match='unknown MD settings'):
        li.prepare_run(atoms, TERSOFF, {**md, 'thermostat': 'langevin'})
