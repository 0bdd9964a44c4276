"""Quantum ESPRESSO results as dataset labels: units and signs (no AiiDA import).

aiida-quantumespresso reports the energy in eV, forces in eV/Å and the stress in
GPa with QE's sign (positive = compressive). Datasets hold the stress in eV/Å³
with the ASE sign (positive = tensile), so the stress is converted back through
the very constants the parser used (``qe_tools``) and negated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qe_tools import CONSTANTS

from aiida_trainspot.data.columns import carries_stress

#: GPa -> eV/Å³ with the constants aiida-quantumespresso's parser used for the inverse.
GPA_TO_EV_PER_ANG3 = (
    1e9 * CONSTANTS.bohr_si**3 / CONSTANTS.ry_si * CONSTANTS.ry_to_ev / CONSTANTS.bohr_to_ang**3
)


def voigt_from_full(stress: np.ndarray) -> np.ndarray:
    """Voigt components (xx, yy, zz, yz, xz, xy) of a 3x3 stress."""
    stress = np.asarray(stress, dtype=float).reshape(3, 3)
    return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def stress_to_ase(stress_gpa: np.ndarray) -> np.ndarray:
    """QE stress (3x3, GPa, positive compressive) -> Voigt eV/Å³ with the ASE sign."""
    return -voigt_from_full(stress_gpa) * GPA_TO_EV_PER_ANG3


def labels_from_qe(
    energy_ev: Any, forces: Any, stress_gpa: Any, n_atoms: int, pbc: Any
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Check and convert the results of one pw.x run; raise ValueError naming what is wrong.

    ``pbc`` is the frame's periodicity (3 bools). The stress is kept for frames periodic
    along at least two axes (:func:`~aiida_trainspot.data.columns.carries_stress`): bulk,
    and 2D frames, whose stress pw.x gives as (1/V) dE/dε with V the whole cell's volume,
    vacuum included (the in-plane xx, yy, xy describe the layer). Frames periodic along
    fewer axes get none (missing, never zero).
    """
    if energy_ev is None:
        raise ValueError('no energy in the output')
    energy = float(energy_ev)
    if forces is None:
        raise ValueError('no forces in the output (tprnfor)')
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (n_atoms, 3):
        raise ValueError(f'forces have shape {forces.shape}, expected ({n_atoms}, 3)')
    stress = None
    if bool(carries_stress(pbc)):
        if stress_gpa is None:
            raise ValueError('no stress in the output (tstress)')
        stress = stress_to_ase(stress_gpa)
    values = [np.atleast_1d(energy), forces.ravel()] + ([stress] if stress is not None else [])
    if not all(np.isfinite(v).all() for v in values):
        raise ValueError('non-finite energy, forces or stress in the output')
    return energy, forces, stress
