"""Load a trained potential as an ASE calculator, whatever the engine (no AiiDA import).

Every later stage (exploration, evaluation) goes through :func:`load_calculator`,
so file names and engine-specific loading live in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENGINES = ('mace', 'metatrain')
DTYPES = ('float64', 'float32')
DEVICES = ('cpu', 'cuda')


def load_calculator(
    engine: str,
    model_path: str | Path,
    *,
    device: str = 'cpu',
    dtype: str = 'float64',
    extensions_dir: str | Path | None = None,
) -> Any:
    """Return an ASE calculator (energy eV, forces eV/Å, stress eV/Å³) for a model file."""
    model_path = Path(model_path)
    if engine not in ENGINES:
        raise ValueError(f'unknown engine {engine!r}; choose one of {list(ENGINES)}')
    if device not in DEVICES:
        raise ValueError(f'unknown device {device!r}; choose one of {list(DEVICES)}')
    if dtype not in DTYPES:
        raise ValueError(f'unknown dtype {dtype!r}; choose one of {list(DTYPES)}')
    if not model_path.is_file():
        raise FileNotFoundError(f'model file {model_path} does not exist')
    if engine == 'mace':
        return _full_volume_mace(model_path, device, dtype)
    from metatomic_ase import MetatomicCalculator

    kwargs: dict[str, Any] = {'device': device}
    if extensions_dir is not None:
        kwargs['extensions_directory'] = str(extensions_dir)
    return MetatomicCalculator(str(model_path), **kwargs)


def _full_volume_mace(model_path: Path, device: str, dtype: str) -> Any:
    """A MACE calculator whose stress is over the frame's own cell volume, vacuum included.

    MACE divides the virial of a frame with a non-periodic axis by the volume of a cell it
    lengthened along that axis (:func:`~.mace.config.mace_stress_volume`), so a 2D frame's
    stress comes out many times too small; the barostat of an MD run and every prediction
    need the dataset's convention, which is pw.x's. Fully periodic frames are untouched.
    """
    from ase.calculators.calculator import all_changes
    from mace.calculators import MACECalculator

    from .mace.config import mace_stress_volume

    class FullVolumeMACECalculator(MACECalculator):
        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            frame = self.atoms
            volume = abs(float(frame.cell.volume))
            if 'stress' in self.results and not frame.pbc.all() and volume > 1e-12:
                used = mace_stress_volume(frame.positions, frame.cell.array, frame.pbc, self.r_max)
                self.results['stress'] = self.results['stress'] * (used / volume)

    return FullVolumeMACECalculator(model_paths=str(model_path), device=device, default_dtype=dtype)
