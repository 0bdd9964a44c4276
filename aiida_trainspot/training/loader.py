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
        from mace.calculators import MACECalculator

        return MACECalculator(model_paths=str(model_path), device=device, default_dtype=dtype)
    from metatomic_ase import MetatomicCalculator

    kwargs: dict[str, Any] = {'device': device}
    if extensions_dir is not None:
        kwargs['extensions_directory'] = str(extensions_dir)
    return MetatomicCalculator(str(model_path), **kwargs)
