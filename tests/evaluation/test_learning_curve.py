"""Every iteration's committee scored on the same held-out frames."""

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from aiida_trainspot.data.convert import columns_from_atoms
from aiida_trainspot.evaluation.learning_curve import held_out_curve


def test_committees_are_scored_on_the_same_frames_in_iteration_order(emt_copper):
    frames = emt_copper(0, 4)
    columns = columns_from_atoms(frames)
    poor = [LennardJones(sigma=2.3, epsilon=0.4, rc=5.0), LennardJones(sigma=2.2, epsilon=0.5)]
    points = held_out_curve({2: [EMT(), EMT()], 1: poor}, columns)
    assert [p.iteration for p in points] == [1, 2]
    assert all(p.n_frames == len(frames) for p in points)
    # the exact committee scores zero; the first one the RMSE of its mean, computed here
    assert points[1].energy == pytest.approx(0.0, abs=1e-9)
    assert points[1].forces == pytest.approx(0.0, abs=1e-9)
    mean_energy = []
    for atoms in frames:
        energies = []
        for calculator in poor:
            copy = atoms.copy()
            copy.calc = calculator
            energies.append(copy.get_potential_energy())
        mean_energy.append((np.mean(energies) - atoms.get_potential_energy()) / len(atoms))
    expected = 1000 * np.sqrt(np.mean(np.square(mean_energy)))
    assert points[0].energy == pytest.approx(expected, rel=1e-9)
    assert points[0].forces > 0 and points[0].stress > 0


def test_nothing_to_score_is_an_error(emt_copper):
    frames = emt_copper(0, 2)
    with pytest.raises(ValueError, match='no committee'):
        held_out_curve({}, columns_from_atoms(frames))
    unlabelled = [atoms.copy() for atoms in frames]  # copies carry no calculator
    with pytest.raises(ValueError, match='no labels'):
        held_out_curve({1: [EMT()]}, columns_from_atoms(unlabelled))
