"""Fixtures of the loop tests: carbon structures and the codes of every stage."""

import pytest
from aiida import orm
from ase import Atoms
from ase.build import bulk, graphene
from ase.cell import Cell

from aiida_trainspot.data import PESData

TERSOFF_FILE = '/usr/share/lammps/potentials/SiC.tersoff'


def carbon_structures():
    """Diamond, graphite and graphene: the carbon example's starting structures (tiny cells)."""
    diamond = bulk('C', 'diamond', a=3.567)
    graphite = Atoms(
        'C4',
        cell=Cell.fromcellpar([2.46, 2.46, 6.70, 90, 90, 120]),
        scaled_positions=[[0, 0, 0.25], [1 / 3, 2 / 3, 0.25], [0, 0, 0.75], [2 / 3, 1 / 3, 0.75]],
        pbc=True,
    )  # AB-stacked graphite
    sheet = graphene(a=2.46, vacuum=6.0)  # c = 12 A: pw.x 2D cutoff > 10 bohr
    sheet.pbc = (True, True, False)
    for atoms in (diamond, graphite, sheet):
        atoms.info.clear()
    return [diamond, graphite, sheet]


@pytest.fixture
def carbon_structures_dataset(aiida_profile):
    return PESData.from_ase(carbon_structures())


@pytest.fixture
def loop_codes(ase_code, mace_code, ase_md_code, evaluate_code):
    return {
        'ase_label': ase_code,
        'train': mace_code,
        'md': ase_md_code,
        'evaluate': evaluate_code,
    }


@pytest.fixture
def tersoff_file(aiida_profile):
    return orm.SinglefileData(TERSOFF_FILE)
