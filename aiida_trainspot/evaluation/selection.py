r"""Selection of the frames to label from calibrated committee disagreement.

The steps, in order (``F`` frames, per-frame arrays of length ``F``):

1. **Candidates**: frames with :math:`\delta_\alpha > \tau_\alpha` for any property
   :math:`\alpha` that has both a threshold and a disagreement (NaN never exceeds a threshold,
   so a property missing for a frame cannot make it a candidate), and frames flagged
   ``non_finite`` (reason ``'non_finite'``: a member's prediction of the frame was not finite,
   the plainest sign that the committee does not know it; its δ, from the other members, may
   be anything or missing).
2. **Trust bound**: a candidate is *rejected* (recorded with its reasons, never labelled) when
   it is unphysical or far outside what the committee knows:

   - ``'too_close'``: its minimum interatomic distance is below ``min_distance`` (0.5 Å);
   - ``'force_disagreement'``: :math:`\delta_F` above ``max_force_disagreement`` (eV/Å) or,
     when ``force_disagreement_factor`` is given, above that factor times :math:`\tau_F`. Both
     are off by default: the paper has no upper bound on disagreement, and a bound relative to
     :math:`\tau_F` throws away the most informative frames of an early campaign (where the
     committee knows least) and can leave a loop with candidates but nothing to label;
   - ``'large_force'``: the largest committee-mean atomic force norm above ``max_force``
     (50 eV/Å).

   Each check runs only when its input is given; the reasons are recorded for every frame. The
   default bounds are physical (distance, force), so a frame is rejected for what it *is*,
   never for how unsure the committee is about it.
3. **Near-duplicate thinning**: the trusted candidates are grouped by ``run_id`` and ordered by
   ``step`` (then by frame index). Walking through each run, a frame is *thinned* when it has the
   same atoms as the previously kept frame of that run (same count and, when ``numbers`` is
   given, same species in the same order) and the largest atomic displacement between them,
   :math:`\max_i |r_i - r'_i|` (minimum image along periodic axes when ``cells`` is given), is
   below ``min_displacement`` (0.1 Å); otherwise it is kept and becomes the reference.
4. **Strategy**: the trusted, thinned candidates (the *pool*) go to the selection strategy named
   by ``strategy``, which returns at most ``max_selected`` (1000) of them, each with a reason (see
   :class:`SelectionInput`, :data:`STRATEGIES`). Steps 1 to 3 are common to every strategy. The two
   built-in strategies are today's cap, ``cap_order`` being the older name of the same choice:

   - ``'paper'`` (the default, ``cap_order='random'``, the paper's rule): when the pool holds more
     than ``max_selected`` frames they are drawn without replacement by
     ``numpy.random.default_rng(seed)``;
   - ``'disagreement'`` (``cap_order='disagreement'``): the frames furthest above their thresholds
     come first (largest :math:`\max_\alpha \delta_\alpha / \tau_\alpha`, ties by frame index),
     which spends a small label budget where the committee is least sure; frames flagged
     ``non_finite`` rank before all others.

Flagged frames go through the trust bound like the others (their committee-mean forces are those
of the members with a finite prediction; a frame whose members are all non-finite has none, and
only its distances are checked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from aiida_trainspot.common.engines import SELECTION_STRATEGIES, registered
from aiida_trainspot.common.seeds import derive_rng
from aiida_trainspot.common.settings import nearest_key

from .disagreement import check_n_atoms, frame_offsets, property_arrays

__all__ = [
    'CAP_ORDERS',
    'CAP_ORDER_STRATEGIES',
    'DEFAULT_STRATEGY',
    'REJECTION_REASONS',
    'STRATEGIES',
    'SelectionInput',
    'SelectionResult',
    'SelectionSettings',
    'SelectionStrategy',
    'StrategyChoice',
    'candidate_mask',
    'get_strategy',
    'register_strategy',
    'select_frames',
    'thin_near_duplicates',
    'trust_violations',
]

#: Reasons a frame can be rejected by the trust bound.
REJECTION_REASONS = ('too_close', 'force_disagreement', 'large_force')

#: How the cap picks among more trusted candidates than ``max_selected`` (the older spelling of
#: the two built-in strategies, see :data:`CAP_ORDER_STRATEGIES`).
CAP_ORDERS = ('random', 'disagreement')

#: The strategy each ``cap_order`` names.
CAP_ORDER_STRATEGIES = {'random': 'paper', 'disagreement': 'disagreement'}

#: The strategy of a campaign that names none: the paper's rule.
DEFAULT_STRATEGY = 'paper'


@dataclass(frozen=True)
class SelectionSettings:
    """Parameters of :func:`select_frames` (lengths Å, forces eV/Å); JSON round trip.

    ``strategy`` names a registered selection strategy (:data:`STRATEGIES`); ``cap_order``
    (``'random'`` or ``'disagreement'``) is the older name of the same choice, for the two
    built-in strategies (:data:`CAP_ORDER_STRATEGIES`). Give either; both must agree. After
    construction both are filled in: ``strategy`` always, ``cap_order`` for a built-in strategy
    (None for any other), so that spellings of one choice compare equal.
    """

    max_selected: int | None = 1000
    min_displacement: float = 0.1
    min_distance: float = 0.5
    max_force_disagreement: float | None = None
    force_disagreement_factor: float | None = None
    max_force: float | None = 50.0
    cap_order: str | None = None
    strategy: str | None = None

    def __post_init__(self) -> None:
        if self.cap_order is not None and self.cap_order not in CAP_ORDERS:
            raise ValueError(f'cap_order must be one of {CAP_ORDERS}, got {self.cap_order!r}')
        implied = CAP_ORDER_STRATEGIES.get(self.cap_order)
        strategy = self.strategy
        if strategy is None:
            strategy = implied or DEFAULT_STRATEGY
        elif implied is not None and implied != strategy:
            raise ValueError(
                f'cap_order {self.cap_order!r} is the strategy {implied!r}, but strategy is '
                f'{strategy!r}: give only strategy'
            )
        get_strategy(strategy)  # an unknown name fails here, at submission
        object.__setattr__(self, 'strategy', strategy)
        orders = {name: order for order, name in CAP_ORDER_STRATEGIES.items()}
        object.__setattr__(self, 'cap_order', orders.get(strategy))
        if self.max_selected is not None and int(self.max_selected) < 0:
            raise ValueError(f'max_selected must be >= 0 or None, got {self.max_selected}')
        for name in ('min_displacement', 'min_distance'):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('max_force_disagreement', 'force_disagreement_factor', 'max_force'):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f'{name} must be > 0 or None (no bound), got {value}')

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectionSettings:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f'unknown selection settings {sorted(unknown)}; known: {sorted(known)}'
            )
        return cls(**data)


def _indices(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask).astype(np.int64)


@dataclass(frozen=True, eq=False)
class SelectionResult:
    """Outcome of :func:`select_frames`; all index arrays are sorted frame indices.

    ``rejected``, ``thinned`` and ``selected`` are disjoint subsets of ``candidates``; those
    neither rejected, thinned nor selected were left out by the strategy (``capped``). ``reasons``
    maps each of :data:`REJECTION_REASONS` to an (F,) boolean array over *all* frames.
    ``non_finite``: the frames flagged ``non_finite``, candidates for that reason (whatever their
    δ). ``strategy``: the name of the strategy that chose ``selected``; ``selection_reasons``: its
    reason for each selected frame, in the order of ``selected``.
    """

    n_frames: int
    candidates: np.ndarray
    rejected: np.ndarray
    thinned: np.ndarray
    selected: np.ndarray
    reasons: dict[str, np.ndarray]
    seed: int
    non_finite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    strategy: str = DEFAULT_STRATEGY
    selection_reasons: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        """Numbers of frames at each step."""
        kept = self.candidates.size - self.rejected.size - self.thinned.size
        return {
            'frames': self.n_frames,
            'candidates': int(self.candidates.size),
            'rejected': int(self.rejected.size),
            'thinned': int(self.thinned.size),
            'capped': int(kept - self.selected.size),
            'selected': int(self.selected.size),
            **{f'rejected_{r}': int(self.reasons[r][self.rejected].sum()) for r in self.reasons},
            'non_finite': int(self.non_finite.size),
            'selected_non_finite': int(np.isin(self.selected, self.non_finite).sum()),
        }

    def rejection_reasons(self, frame: int) -> list[str]:
        """The trust-bound reasons that apply to ``frame``."""
        return [name for name, flags in self.reasons.items() if flags[frame]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: counts, index lists and the reasons of each rejected frame.

        ``non_finite`` lists the candidates flagged non-finite (candidates for that reason);
        ``selection_reasons`` maps each selected frame to the strategy's reason for it.
        """
        return {
            'seed': self.seed,
            'strategy': self.strategy,
            'counts': self.counts,
            'candidates': self.candidates.tolist(),
            'non_finite': self.non_finite.tolist(),
            'rejected': {str(i): self.rejection_reasons(i) for i in self.rejected.tolist()},
            'thinned': self.thinned.tolist(),
            'selected': self.selected.tolist(),
            'selection_reasons': {
                str(i): reason
                for i, reason in zip(self.selected.tolist(), self.selection_reasons, strict=True)
            },
        }


def candidate_mask(disagreement: Any, thresholds: Any) -> np.ndarray:
    """(F,) frames with δ > τ for any property present in both arguments.

    :param disagreement: per-frame δ by property (a mapping or a ``Disagreement``).
    :param thresholds: τ by property (a mapping or a ``Calibration``).
    """
    deltas = property_arrays(disagreement)
    taus = _threshold_map(thresholds)
    lengths = {v.size for v in deltas.values()}
    if len(lengths) > 1:
        raise ValueError(f'disagreement arrays differ in length: {sorted(lengths)}')
    mask = np.zeros(lengths.pop() if lengths else 0, dtype=bool)
    for name, tau in taus.items():
        if name in deltas:
            with np.errstate(invalid='ignore'):
                mask |= deltas[name] > tau
    return mask


def _threshold_map(thresholds: Any) -> dict[str, float]:
    if hasattr(thresholds, 'thresholds'):
        thresholds = thresholds.thresholds
    return {str(k): float(v) for k, v in thresholds.items()}


def _optional_frame_array(value: Any, n_frames: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=float).reshape(-1)
    if array.shape != (n_frames,):
        raise ValueError(f'{name} must have shape ({n_frames},), got {array.shape}')
    return array


def trust_violations(
    n_frames: int,
    *,
    force_disagreement: Any = None,
    force_threshold: float | None = None,
    min_distances: Any = None,
    max_forces: Any = None,
    settings: SelectionSettings | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame trust-bound violations, one (F,) boolean array per reason.

    :param force_disagreement: (F,) δ_F, eV/Å.
    :param force_threshold: τ_F, used for the optional bound ``force_disagreement_factor * τ_F``.
    :param min_distances: (F,) minimum interatomic distance of each frame, Å.
    :param max_forces: (F,) largest committee-mean atomic force norm, eV/Å.
    """
    settings = settings or SelectionSettings()
    reasons = {name: np.zeros(n_frames, dtype=bool) for name in REJECTION_REASONS}
    distances = _optional_frame_array(min_distances, n_frames, 'min_distances')
    if distances is not None:
        reasons['too_close'] = distances < settings.min_distance
    delta_f = _optional_frame_array(force_disagreement, n_frames, 'force_disagreement')
    bound = settings.max_force_disagreement
    factor = settings.force_disagreement_factor
    if bound is None and factor is not None and force_threshold is not None:
        bound = factor * force_threshold
    if delta_f is not None and bound is not None:
        reasons['force_disagreement'] = delta_f > bound
    forces = _optional_frame_array(max_forces, n_frames, 'max_forces')
    if forces is not None and settings.max_force is not None:
        reasons['large_force'] = forces > settings.max_force
    return reasons


def _max_displacement(
    a: np.ndarray, b: np.ndarray, cell: np.ndarray | None, pbc: np.ndarray | None
) -> float:
    """max_i |b_i - a_i|, with the minimum image along the periodic axes of ``cell``."""
    delta = b - a
    if cell is not None and pbc is not None and np.any(pbc):
        fractional = delta @ np.linalg.pinv(cell)
        shift = np.where(pbc, np.round(fractional), 0.0)
        delta = delta - shift @ cell
    return float(np.max(np.linalg.norm(delta, axis=1))) if delta.size else 0.0


def thin_near_duplicates(
    frames: Any,
    positions: Any,
    n_atoms: Any,
    *,
    run_id: Any = None,
    step: Any = None,
    min_displacement: float = 0.1,
    numbers: Any = None,
    cells: Any = None,
    pbc: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``frames`` into (kept, thinned), both sorted (rule in the module docstring).

    :param frames: indices of the frames to thin (e.g. trusted candidates).
    :param positions: (A, 3) positions of all frames, Å; ``n_atoms`` (F,) their counts.
    :param run_id: (F,) source run of each frame (any comparable values); default: one run.
    :param step: (F,) time step within the run; default: the frame index.
    :param numbers: (A,) atomic numbers; frames differing in species are never duplicates.
    :param cells: (F, 3, 3) cells and ``pbc`` (F, 3) for minimum-image displacements.
    """
    counts = check_n_atoms(n_atoms)
    offsets = frame_offsets(counts)
    n_frames = counts.size
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    positions = np.asarray(positions, dtype=float)
    if positions.shape != (int(offsets[-1]), 3):
        raise ValueError(f'positions must have shape ({int(offsets[-1])}, 3)')
    runs = np.zeros(n_frames, dtype=np.int64)
    if run_id is not None:
        runs = np.unique(np.asarray(run_id), return_inverse=True)[1].reshape(-1)
    steps = np.arange(n_frames) if step is None else np.asarray(step).reshape(-1)
    if runs.shape != (n_frames,) or steps.shape != (n_frames,):
        raise ValueError(f'run_id and step must have shape ({n_frames},)')
    numbers = None if numbers is None else np.asarray(numbers).reshape(-1)
    cells = None if cells is None else np.asarray(cells, dtype=float).reshape(n_frames, 3, 3)
    pbc = None if pbc is None else np.asarray(pbc, dtype=bool).reshape(n_frames, 3)
    order = frames[np.lexsort((frames, steps[frames], runs[frames]))]
    kept, thinned = [], []
    reference: dict[int, int] = {}  # run -> last kept frame
    for frame in order.tolist():
        previous = reference.get(int(runs[frame]))
        if previous is not None and _same_atoms(previous, frame, counts, offsets, numbers):
            here = slice(offsets[frame], offsets[frame + 1])
            there = slice(offsets[previous], offsets[previous + 1])
            cell = None if cells is None else cells[frame]
            frame_pbc = None if pbc is None else pbc[frame]
            moved = _max_displacement(positions[there], positions[here], cell, frame_pbc)
            if moved < min_displacement:
                thinned.append(frame)
                continue
        kept.append(frame)
        reference[int(runs[frame])] = frame
    return np.sort(np.array(kept, dtype=np.int64)), np.sort(np.array(thinned, dtype=np.int64))


def _same_atoms(
    a: int, b: int, counts: np.ndarray, offsets: np.ndarray, numbers: np.ndarray | None
) -> bool:
    if counts[a] != counts[b]:
        return False
    if numbers is None:
        return True
    return bool(
        np.array_equal(numbers[offsets[a] : offsets[a + 1]], numbers[offsets[b] : offsets[b + 1]])
    )


def excess_over_threshold(
    deltas: Mapping[str, np.ndarray], taus: Mapping[str, float]
) -> np.ndarray:
    """Per frame, the largest δ/τ over the properties with a threshold (NaN counts as 0).

    A ratio rather than δ itself, so that energies, forces and stresses rank on one scale.
    """
    n_frames = len(next(iter(deltas.values())))
    excess = np.zeros(n_frames)
    for name, tau in taus.items():
        if name not in deltas:
            continue
        delta = np.nan_to_num(np.asarray(deltas[name], dtype=float), nan=0.0)
        ratio = delta / tau if tau > 0 else np.where(delta > 0, np.inf, 0.0)
        excess = np.maximum(excess, ratio)
    return excess


# --------------------------------------------------------------------------------------------------
# Selection strategies: one signature, a registry


def _read_only(value: Any, dtype: Any = None) -> np.ndarray | None:
    """A read-only view of ``value`` as an array (no copy when it already is one), or None."""
    if value is None:
        return None
    view = np.asarray(value, dtype=dtype).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class SelectionInput:
    """What a selection strategy chooses from, after the common steps.

    The common steps are candidates, trust bound and thinning. Plain arrays, read-only, every
    per-frame array over all ``F`` frames.

    :param pool: sorted frame indices the strategy may select: the trusted, thinned candidates.
    :param deltas: (F,) δ by property (NaN where missing).
    :param thresholds: τ by property (the properties of the selection criterion).
    :param non_finite: (F,) frames a member's prediction was not finite for.
    :param budget: at most this many frames may be selected (``max_selected``); None: no limit.
    :param seed: seed for the strategy's ``numpy.random.default_rng`` (the only randomness
        allowed, so that the same input and seed give the same selection).
    :param settings: the whole :class:`SelectionSettings`.
    :param n_atoms: (F,) atoms per frame; ``positions`` (A, 3) Å, ``numbers`` (A,), ``cells``
        (F, 3, 3), ``pbc`` (F, 3): the frames, where the caller has them, else None.
    :param run_id: (F,) source MD run and ``step`` (F,) its time step, or None.
    :param min_distances: (F,) shortest interatomic distance (Å), or None.
    :param max_forces: (F,) largest committee-mean force norm (eV/Å), or None.
    """

    pool: np.ndarray
    deltas: Mapping[str, np.ndarray]
    thresholds: Mapping[str, float]
    non_finite: np.ndarray
    budget: int | None
    seed: int
    settings: SelectionSettings
    n_atoms: np.ndarray | None = None
    positions: np.ndarray | None = None
    numbers: np.ndarray | None = None
    cells: np.ndarray | None = None
    pbc: np.ndarray | None = None
    run_id: np.ndarray | None = None
    step: np.ndarray | None = None
    min_distances: np.ndarray | None = None
    max_forces: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        """F, the number of frames (selectable or not)."""
        return int(self.non_finite.size)

    def excess(self) -> np.ndarray:
        """(F,) largest δ/τ of each frame (:func:`excess_over_threshold`)."""
        return excess_over_threshold(self.deltas, self.thresholds)


class StrategyChoice(NamedTuple):
    """What a strategy returns: frame indices and one short reason per selected frame.

    ``selected``: a subset of the pool, at most ``budget`` frames, in any order; ``reasons`` in
    the same order (one string: the reason of every frame).
    """

    selected: Any
    reasons: Any


#: A selection strategy: ``strategy(selection: SelectionInput) -> StrategyChoice`` (or the
#: ``(selected, reasons)`` tuple); pure, deterministic given its input and ``selection.seed``.
SelectionStrategy = Callable[[SelectionInput], StrategyChoice]

#: The registered selection strategies by name (``register_strategy`` adds one).
STRATEGIES: dict[str, SelectionStrategy] = {}


def register_strategy(
    name: str, strategy: SelectionStrategy, *, replace: bool = False
) -> SelectionStrategy:
    """Register ``strategy`` under ``name`` (``SelectionSettings(strategy=name)`` then selects it).

    A name taken already raises ValueError unless ``replace``. Returns ``strategy``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'a selection strategy needs a non-empty name, got {name!r}')
    if not callable(strategy):
        raise TypeError(f'selection strategy {name!r} must be callable, got {strategy!r}')
    if name in STRATEGIES and not replace:
        raise ValueError(f'selection strategy {name!r} is registered already')
    STRATEGIES[name] = strategy
    return strategy


def get_strategy(name: str) -> SelectionStrategy:
    """The strategy registered as ``name``; ValueError naming the known ones otherwise.

    Besides :func:`register_strategy` (for the running Python only), a package registers a
    strategy under the entry point group ``trainspot.selection.strategies``: selection runs in
    the daemon's workers, which see installed entry points but not a notebook's registrations.
    """
    if isinstance(name, str) and name in STRATEGIES:
        return STRATEGIES[name]
    plugins = registered(SELECTION_STRATEGIES)
    if isinstance(name, str) and name in plugins:
        return plugins[name]
    known = sorted(set(STRATEGIES) | set(plugins))
    match = nearest_key(name, known) if isinstance(name, str) else None
    hint = f'did you mean {match!r}? ' if match is not None else ''
    raise ValueError(f'unknown selection strategy {name!r}; {hint}known: {known}')


def paper_strategy(selection: SelectionInput) -> StrategyChoice:
    """The paper's rule: the whole pool, or ``budget`` frames drawn by ``default_rng(seed)``."""
    pool, budget = selection.pool, selection.budget
    if budget is None or pool.size <= budget:
        return StrategyChoice(pool, ('within_budget',) * pool.size)
    rng = derive_rng(selection.seed)
    chosen = rng.choice(pool, size=int(budget), replace=False)
    return StrategyChoice(chosen, ('random_draw',) * chosen.size)


def disagreement_strategy(selection: SelectionInput) -> StrategyChoice:
    """The whole pool, or the ``budget`` frames of largest δ/τ; no randomness.

    Flagged frames come first, ties go by frame index.
    """
    pool, budget = selection.pool, selection.budget
    if budget is None or pool.size <= budget:
        return StrategyChoice(pool, ('within_budget',) * pool.size)
    flagged = selection.non_finite
    excess = np.where(flagged, np.inf, selection.excess())[pool]
    chosen = pool[np.argsort(-excess, kind='stable')[: int(budget)]]
    reasons = tuple('non_finite' if flagged[i] else 'largest_excess' for i in chosen.tolist())
    return StrategyChoice(chosen, reasons)


register_strategy('paper', paper_strategy)
register_strategy('disagreement', disagreement_strategy)


def _checked_choice(
    name: str, choice: Any, selection: SelectionInput
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The strategy's choice as (sorted indices, their reasons); ValueError saying what is off."""
    if not isinstance(choice, tuple) or len(choice) != 2:
        raise ValueError(
            f'selection strategy {name!r} must return (selected, reasons), got {choice!r}'
        )
    selected, reasons = choice
    indices = np.asarray(selected).reshape(-1)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f'selection strategy {name!r} returned non-integer frame indices')
    indices = indices.astype(np.int64)
    reasons = (reasons,) * indices.size if isinstance(reasons, str) else tuple(reasons)
    if len(reasons) != indices.size or not all(isinstance(r, str) and r for r in reasons):
        raise ValueError(
            f'selection strategy {name!r} must give one non-empty reason per selected frame '
            f'({indices.size} frames, {len(reasons)} reasons)'
        )
    if np.unique(indices).size != indices.size:
        raise ValueError(f'selection strategy {name!r} selected a frame twice')
    outside = np.setdiff1d(indices, selection.pool)
    if outside.size:
        raise ValueError(
            f'selection strategy {name!r} selected frames outside the pool of trusted, thinned '
            f'candidates: {outside[:10].tolist()}'
        )
    if selection.budget is not None and indices.size > selection.budget:
        raise ValueError(
            f'selection strategy {name!r} selected {indices.size} frames, over the budget '
            f'max_selected = {selection.budget}'
        )
    order = np.argsort(indices, kind='stable')
    return indices[order], tuple(reasons[i] for i in order.tolist())


def select_frames(
    disagreement: Any,
    thresholds: Any,
    *,
    seed: int,
    n_atoms: Any = None,
    positions: Any = None,
    run_id: Any = None,
    step: Any = None,
    numbers: Any = None,
    cells: Any = None,
    pbc: Any = None,
    min_distances: Any = None,
    max_forces: Any = None,
    non_finite: Any = None,
    settings: SelectionSettings | None = None,
) -> SelectionResult:
    """Candidates → trust bound → near-duplicate thinning → the settings' selection strategy.

    :param disagreement: per-frame δ by property (a mapping or a ``Disagreement``); its
        ``'forces'`` entry (δ_F, eV/Å) feeds the force-disagreement trust bound.
    :param thresholds: τ by property (a mapping or a ``Calibration``).
    :param seed: seed of the strategy's ``numpy`` Generator (the paper's random cap draws with it).
    :param n_atoms: (F,) atoms per frame, and ``positions`` (A, 3) Å: needed for thinning,
        which is skipped when either is None (see :func:`thin_near_duplicates` for the rest).
    :param min_distances: (F,) minimum interatomic distance per frame (Å), or None.
    :param max_forces: (F,) largest committee-mean force norm per frame (eV/Å), or None.
    :param non_finite: (F,) frames where a member's prediction was not finite, or None: always
        candidates, first under the ``'disagreement'`` strategy.
    """
    settings = settings or SelectionSettings()
    deltas = property_arrays(disagreement)
    taus = _threshold_map(thresholds)
    candidates = candidate_mask(deltas, taus)
    n_frames = candidates.size
    flagged = np.zeros(n_frames, dtype=bool)
    if non_finite is not None:
        flagged = np.asarray(non_finite, dtype=bool).reshape(-1)
        if flagged.shape != (n_frames,):
            raise ValueError(f'non_finite must have shape ({n_frames},), got {flagged.shape}')
    candidates = candidates | flagged
    reasons = trust_violations(
        n_frames,
        force_disagreement=deltas.get('forces'),
        force_threshold=taus.get('forces'),
        min_distances=min_distances,
        max_forces=max_forces,
        settings=settings,
    )
    untrusted = np.logical_or.reduce(list(reasons.values()))
    rejected = candidates & untrusted
    trusted = _indices(candidates & ~untrusted)
    thinned = np.zeros(0, dtype=np.int64)
    if positions is not None and n_atoms is not None:
        if check_n_atoms(n_atoms).size != n_frames:
            raise ValueError(f'n_atoms has {np.size(n_atoms)} frames, disagreement {n_frames}')
        trusted, thinned = thin_near_duplicates(
            trusted,
            positions,
            n_atoms,
            run_id=run_id,
            step=step,
            min_displacement=settings.min_displacement,
            numbers=numbers,
            cells=cells,
            pbc=pbc,
        )
    selection = SelectionInput(
        pool=_read_only(trusted),
        deltas=MappingProxyType({name: _read_only(value) for name, value in deltas.items()}),
        thresholds=MappingProxyType(dict(taus)),
        non_finite=_read_only(flagged),
        budget=None if settings.max_selected is None else int(settings.max_selected),
        seed=int(seed),
        settings=settings,
        n_atoms=_read_only(n_atoms),
        positions=_read_only(positions, float),
        numbers=_read_only(numbers),
        cells=_read_only(cells, float),
        pbc=_read_only(pbc, bool),
        run_id=_read_only(run_id),
        step=_read_only(step),
        min_distances=_read_only(_optional_frame_array(min_distances, n_frames, 'min_distances')),
        max_forces=_read_only(_optional_frame_array(max_forces, n_frames, 'max_forces')),
    )
    selected, selection_reasons = _checked_choice(
        settings.strategy, get_strategy(settings.strategy)(selection), selection
    )
    return SelectionResult(
        n_frames=n_frames,
        candidates=_indices(candidates),
        rejected=_indices(rejected),
        thinned=thinned,
        selected=selected.astype(np.int64),
        reasons=reasons,
        seed=int(seed),
        non_finite=_indices(flagged),
        strategy=settings.strategy,
        selection_reasons=selection_reasons,
    )
