"""Pseudopotential families from a folder of UPF files (e.g. Debian's quantum-espresso-data).

SSSP cannot be downloaded everywhere; this builds an aiida-pseudo
``CutoffsPseudoPotentialFamily`` from local files, one per element, with the
cutoffs the user gives, so that ``PwBaseWorkChain.get_builder_from_protocol`` works.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from aiida import orm

DEBIAN_PSEUDO_DIR = Path('/usr/share/espresso/pseudo')

#: Cutoffs (Ry) known to work for the tests and examples, per element, with the file chosen.
KNOWN_PSEUDOS: dict[str, tuple[str, float, float]] = {
    'C': ('C.pbe-rrkjus.UPF', 35.0, 280.0),
    'Si': ('Si.pbe-rrkj.UPF', 30.0, 120.0),
    'O': ('O.pbe-rrkjus.UPF', 40.0, 320.0),
    'H': ('H.pbe-kjpaw.UPF', 40.0, 320.0),
    'N': ('N.pbe-kjpaw.UPF', 40.0, 320.0),
}


def choose_files(
    folder: Path, elements: Iterable[str], files: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Pick one UPF file per element: the one named in ``files``, a known one, or the only one."""
    chosen: dict[str, Path] = {}
    files = dict(files or {})
    for element in elements:
        if element in files:
            path = folder / files[element]
        elif element in KNOWN_PSEUDOS and (folder / KNOWN_PSEUDOS[element][0]).is_file():
            path = folder / KNOWN_PSEUDOS[element][0]
        else:
            candidates = sorted(
                p for p in folder.iterdir() if p.name.split('.')[0].split('_')[0] == element
            )
            pbe = [p for p in candidates if '.pbe' in p.name.lower()]
            candidates = pbe or candidates
            if len(candidates) != 1:
                names = [p.name for p in candidates] or 'none'
                raise ValueError(
                    f'element {element}: choose one pseudopotential file in {folder} '
                    f'(candidates: {names}); pass it as files={{"{element}": "NAME"}}'
                )
            path = candidates[0]
        if not path.is_file():
            raise ValueError(f'element {element}: pseudopotential file {path} does not exist')
        chosen[element] = path
    return chosen


def create_pseudo_family(
    label: str,
    elements: Iterable[str],
    cutoffs: Mapping[str, tuple[float, float]] | None = None,
    folder: str | Path = DEBIAN_PSEUDO_DIR,
    files: Mapping[str, str] | None = None,
    stringency: str = 'normal',
):
    """Create (or return, if it exists and covers ``elements``) a family with cutoffs in Ry.

    ``cutoffs`` maps element -> (ecutwfc, ecutrho); elements of :data:`KNOWN_PSEUDOS`
    default to the values there. Every element must get a cutoff.
    """
    from aiida_pseudo.data.pseudo.upf import UpfData
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    elements = sorted(set(elements))
    existing = (
        orm.QueryBuilder()
        .append(CutoffsPseudoPotentialFamily, filters={'label': label})
        .first(flat=True)
    )
    if existing is not None:
        missing = sorted(set(elements) - set(existing.elements))
        if missing:
            raise ValueError(
                f'pseudo family {label!r} exists but lacks {missing}; use another label'
            )
        return existing
    cutoffs = dict(cutoffs or {})
    values = {}
    for element in elements:
        if element in cutoffs:
            wfc, rho = cutoffs[element]
        elif element in KNOWN_PSEUDOS:
            _, wfc, rho = KNOWN_PSEUDOS[element]
        else:
            raise ValueError(f'element {element}: give its cutoffs (ecutwfc, ecutrho) in Ry')
        if not 0 < wfc <= rho:
            raise ValueError(f'element {element}: need 0 < ecutwfc <= ecutrho, got {wfc}, {rho}')
        values[element] = {'cutoff_wfc': float(wfc), 'cutoff_rho': float(rho)}
    chosen = choose_files(Path(folder), elements, files)
    with tempfile.TemporaryDirectory() as tmp:
        for element, path in chosen.items():
            shutil.copy(path, Path(tmp) / f'{element}.upf')
        family = CutoffsPseudoPotentialFamily.create_from_folder(
            Path(tmp), label, pseudo_type=UpfData
        )
    family.set_cutoffs(values, stringency, unit='Ry')
    return family
