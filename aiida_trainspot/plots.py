"""Figures of an active-learning campaign: RMSE history, parity, calibration and composition.

Every function writes one PNG (matplotlib's ``Figure`` with the Agg canvas: no display and no
``pyplot`` state are needed) and returns its path. Inputs are what the campaign stores:

- ``records``: the per-iteration records of :mod:`aiida_trainspot.workflows.records` (dicts, as
  read back from JSON), in any order;
- ``predictions``: a :class:`~aiida_trainspot.data.PESData` holding the labels (``energy`` in eV,
  ``forces`` in eV/Å, ``stress`` in eV/Å³), the ``split`` column and the evaluation columns of
  :mod:`aiida_trainspot.evaluation.inference` (``energy_mean``, ``forces_mean``,
  ``stress_mean``, ``delta_*``, ``eps_*``);
- ``calibration``: a :class:`~aiida_trainspot.evaluation.calibration.Calibration`, its
  ``to_dict()`` or a record's ``calibration`` entry (``slopes``, ``thresholds``,
  ``error_thresholds`` by property, eV units).

Missing values (``None``, NaN, absent keys, an empty split) are left out of the figures, never
drawn as zeros. Nothing here imports AiiDA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aiida_trainspot.common.seeds import derive_rng
from aiida_trainspot.evaluation.disagreement import LEGACY_ERROR_KIND, errors_of

__all__ = [
    'calibration_figure',
    'plot_calibration',
    'plot_composition',
    'plot_parity',
    'plot_rmse_history',
    'write_campaign_plots',
]

DPI = 120
PROPERTIES = ('energy', 'forces', 'stress')
SPLITS = ('train', 'validation', 'test')
UNASSIGNED = 'unassigned'
SPLIT_COLOURS = {
    'train': 'tab:blue',
    'validation': 'tab:orange',
    'test': 'tab:green',
    UNASSIGNED: 'tab:gray',
}
TITLES = {'energy': 'Energy', 'forces': 'Forces', 'stress': 'Stress'}
#: Units of the RMSEs of the records (and of the errors in the parity histograms).
RMSE_UNITS = {'energy': 'meV/atom', 'forces': 'meV/Å', 'stress': 'meV/Å³'}
#: Units of the values of the parity and calibration panels.
VALUE_UNITS = {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å³'}
#: Splits the calibration is fitted on by default (frames the committee did not train on).
CALIBRATION_SPLITS = ('validation', 'test')
#: How the axis names the calibration's error kind (``Calibration.error``).
ERROR_LABELS = {'committee_mean': ' of the committee mean', 'members': ", members' RMS"}
#: At most this many points are drawn per split and panel (metrics always use every point).
MAX_POINTS = 20_000
#: A δ or ε at most this fraction of its threshold (τ, ε_thr) is drawn as zero, on the axis:
#: four decades below the tolerance it says nothing about the calibration, and it is above the
#: round-off of symmetric frames (1e-14 in float64, ~1e-6 eV/Å on forces in float32).
ZERO_FRACTION = 1e-4
#: With fewer frames scored than this, a calibration panel marks its TPR and PPV unreliable.
MIN_SCORED = 10
#: Margin of the calibration's δ axis, a fraction of its span: the top and bottom tenth stay
#: free for the quadrant counts (TP, FP, FN, TN) in the corners.
COUNT_MARGIN = 0.11


# ----------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout='constrained')


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _message(path: str | Path, title: str, text: str) -> Path:
    """A small figure that says why there is nothing to draw."""
    figure = _figure(6.0, 3.0)
    ax = figure.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha='center', va='center', fontsize=11, wrap=True)
    return _save(figure, path)


def _number(value: Any) -> float:
    """``value`` as a float; NaN for None or anything that is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None where a level is missing or None."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _sorted_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(records, key=lambda record: int(record['iteration']))


def _integer_iterations(ax: Any, iterations: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    unique = sorted(set(iterations))
    if 0 < len(unique) <= 12:
        ax.set_xticks(unique)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if unique:
        ax.set_xlim(unique[0] - 0.6, unique[-1] + 0.6)
    ax.set_xlabel('iteration')


def _rate(value: float) -> str:
    return 'n/a' if not math.isfinite(value) else f'{value:.2f}'


def _short_log_labels(axis: Any) -> None:
    """Plain short numbers on a log axis; some minor ticks labelled when it spans little."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    low, high = sorted(axis.get_view_interval())
    span = math.log10(high / low) if low > 0 else math.inf
    axis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:.3g}'))
    if span > 1.5:
        axis.set_minor_formatter(NullFormatter())
        return
    mantissas = (2, 3, 5) if span <= 0.6 else (2, 5)

    def minor(value: float, _: Any) -> str:
        if value <= 0:
            return ''
        mantissa = value / 10 ** math.floor(math.log10(value))
        keep = round(mantissa) in mantissas and abs(mantissa - round(mantissa)) < 1e-6
        return f'{value:.3g}' if keep else ''

    axis.set_minor_formatter(FuncFormatter(minor))


def _thin(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` points (a fixed random subset, in order)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(derive_rng(seed).choice(n, size=limit, replace=False))


def _split_names(columns: Any) -> np.ndarray:
    """(F,) split of every frame; ``'unassigned'`` where there is none."""
    n_frames = columns.n_frames
    if 'split' not in columns.names:
        return np.full(n_frames, UNASSIGNED, dtype=object)
    values = np.array([str(v) for v in columns.column('split')], dtype=object)
    values = np.where(columns.mask('split') & (values != ''), values, UNASSIGNED)
    return values.astype(object)


def _split_order(names: np.ndarray) -> list[str]:
    present = set(names.tolist())
    known = [s for s in (*SPLITS, UNASSIGNED) if s in present]
    return known + sorted(present - set(known))


def _read(predictions: Any, names: Sequence[str]) -> Any:
    available = set(predictions.column_names)
    return predictions.get_columns([n for n in names if n in available])


def _mask(columns: Any, name: str) -> np.ndarray:
    return np.asarray(columns.mask(name), dtype=bool)


# ----------------------------------------------------------------------------- RMSE history


def plot_rmse_history(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """RMSE of energy, forces and stress against the iteration, by split; write a PNG.

    One panel per property with at least one value (meV/atom, meV/Å, meV/Å³): the committee-mean
    RMSE as a line with markers, the members' RMSE as mean ± standard deviation (error bars),
    for the splits train, validation and test. Missing values leave gaps.
    """
    from matplotlib.lines import Line2D

    records = _sorted_records(records)
    iterations = [int(r['iteration']) for r in records]

    def series(split: str, prop: str, key: str) -> np.ndarray:
        return np.array([_number(_get(r, 'rmse', split, prop, key)) for r in records], dtype=float)

    data = {
        (split, prop, key): series(split, prop, key)
        for split in SPLITS
        for prop in PROPERTIES
        for key in ('committee', 'member_mean', 'member_std')
    }
    props = [
        prop
        for prop in PROPERTIES
        if any(
            np.isfinite(data[(split, prop, key)]).any()
            for split in SPLITS
            for key in ('committee', 'member_mean')
        )
    ]
    if not props:
        return _message(path, 'RMSE by iteration', 'no RMSE recorded yet')

    figure = _figure(4.4 * len(props), 3.9)
    axes = figure.subplots(1, len(props), squeeze=False)[0]
    x = np.array(iterations, dtype=float)
    shown_splits: list[str] = []
    for ax, prop in zip(axes, props, strict=True):
        values = []
        for position, split in enumerate(SPLITS):
            committee = data[(split, prop, 'committee')]
            mean = data[(split, prop, 'member_mean')]
            std = data[(split, prop, 'member_std')]
            if not (np.isfinite(committee).any() or np.isfinite(mean).any()):
                continue
            if split not in shown_splits:
                shown_splits.append(split)
            colour = SPLIT_COLOURS[split]
            ax.plot(x, committee, color=colour, marker='o', lw=1.8, ms=5)
            offset = 0.09 * (position + 1)  # beside the committee marker, splits apart
            ax.errorbar(
                x + offset,
                mean,
                yerr=np.where(np.isfinite(std), std, 0.0),
                color=colour,
                fmt='s',
                mfc='white',
                ms=4,
                capsize=3,
                elinewidth=1.0,
                alpha=0.8,
            )
            values.extend(v for v in (*committee, *(mean - np.nan_to_num(std))) if np.isfinite(v))
            values.extend(v for v in (*committee, *(mean + np.nan_to_num(std))) if np.isfinite(v))
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_yscale('log')
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(f'{TITLES[prop]} RMSE')
        ax.set_ylabel(f'RMSE ({RMSE_UNITS[prop]})')
        ax.grid(alpha=0.3)
        _integer_iterations(ax, iterations)
    handles = [
        Line2D([], [], color=SPLIT_COLOURS[s], lw=6, alpha=0.8, label=s) for s in shown_splits
    ]
    handles += [
        Line2D([], [], color='k', marker='o', lw=1.8, ms=5, label='committee mean'),
        Line2D([], [], color='k', marker='s', mfc='white', ls='none', label='members: mean ± std'),
    ]
    figure.legend(handles=handles, loc='outside lower center', ncols=len(handles), frameon=False)
    figure.suptitle('Committee RMSE by iteration (labelled dataset)')
    return _save(figure, path)


# ----------------------------------------------------------------------------- parity


def _parity_data(columns: Any) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(property, reference, predicted, split) of every labelled and predicted value."""
    splits = _split_names(columns)
    n_atoms = columns.n_atoms
    out = []
    if 'energy' in columns.names and 'energy_mean' in columns.names:
        ref = np.asarray(columns.column('energy'), dtype=float) / np.maximum(n_atoms, 1)
        pred = np.asarray(columns.column('energy_mean'), dtype=float) / np.maximum(n_atoms, 1)
        keep = _mask(columns, 'energy') & _mask(columns, 'energy_mean')
        keep &= np.isfinite(ref) & np.isfinite(pred)
        out.append(('energy', ref[keep], pred[keep], splits[keep]))
    if 'forces' in columns.names and 'forces_mean' in columns.names:
        frames = _mask(columns, 'forces') & _mask(columns, 'forces_mean')
        atoms = np.repeat(frames, n_atoms)
        ref = np.asarray(columns.column('forces'), dtype=float).reshape(-1, 3)
        pred = np.asarray(columns.column('forces_mean'), dtype=float).reshape(-1, 3)
        atoms &= np.isfinite(ref).all(axis=1) & np.isfinite(pred).all(axis=1)
        atom_splits = np.repeat(splits, n_atoms)
        out.append(
            ('forces', ref[atoms].ravel(), pred[atoms].ravel(), np.repeat(atom_splits[atoms], 3))
        )
    if 'stress' in columns.names and 'stress_mean' in columns.names:
        ref = np.asarray(columns.column('stress'), dtype=float).reshape(-1, 6)
        pred = np.asarray(columns.column('stress_mean'), dtype=float).reshape(-1, 6)
        keep = _mask(columns, 'stress') & _mask(columns, 'stress_mean')
        keep &= np.isfinite(ref).all(axis=1) & np.isfinite(pred).all(axis=1)
        out.append(('stress', ref[keep].ravel(), pred[keep].ravel(), np.repeat(splits[keep], 6)))
    return [item for item in out if item[1].size]


def plot_parity(predictions: Any, path: str | Path, max_points: int = MAX_POINTS) -> Path:
    """Parity of the committee mean against the labels, by split, with error histograms.

    Columns: energy per atom (eV/atom), force components (eV/Å) and, where the frames have
    stress labels and predictions, stress components (eV/Å³). Top row: predicted against
    reference with the line y = x and the RMSE of each split (meV units) in the legend; bottom
    row: histograms of the errors (predicted - reference, meV units). At most ``max_points``
    points per split are drawn; the RMSEs use all of them.
    """
    from matplotlib.ticker import MaxNLocator

    columns = _read(
        predictions,
        ['energy', 'forces', 'stress', 'energy_mean', 'forces_mean', 'stress_mean', 'split'],
    )
    panels = _parity_data(columns)
    if not panels:
        return _message(
            path, 'Parity', 'no frame has both a label and a committee prediction to compare'
        )
    figure = _figure(4.3 * len(panels), 7.0)
    grid = figure.add_gridspec(2, len(panels), height_ratios=(2.4, 1.0))
    for column, (prop, ref, pred, splits) in enumerate(panels):
        top = figure.add_subplot(grid[0, column])
        bottom = figure.add_subplot(grid[1, column])
        errors = (pred - ref) * 1000.0
        finite = errors[np.isfinite(errors)]
        bins = np.histogram_bin_edges(finite, bins='auto') if finite.size else 10
        if isinstance(bins, np.ndarray) and bins.size > 61:
            bins = np.linspace(bins[0], bins[-1], 61)
        n_drawn = min(ref.size, max_points * len(set(splits.tolist())))
        size = 20 if n_drawn <= 500 else 6 if n_drawn <= 5000 else 2
        for position, split in enumerate(_split_order(splits)):
            chosen = splits == split
            rmse = float(np.sqrt(np.mean(errors[chosen] ** 2)))
            shown = _thin(int(chosen.sum()), max_points, seed=position)
            colour = SPLIT_COLOURS.get(split, f'C{position + 3}')
            top.scatter(
                ref[chosen][shown],
                pred[chosen][shown],
                s=size,
                alpha=0.65,
                color=colour,
                edgecolors='none',
                rasterized=True,
                label=f'{split}: RMSE {rmse:.3g} {RMSE_UNITS[prop]} (n={int(chosen.sum())})',
            )
            bottom.hist(
                errors[chosen], bins=bins, histtype='step', lw=1.5, color=colour, label=split
            )
        low = float(min(ref.min(), pred.min()))
        high = float(max(ref.max(), pred.max()))
        pad = 0.05 * (high - low) if high > low else max(abs(high), 1.0) * 0.05
        limits = (low - pad, high + pad)
        top.plot(limits, limits, 'k--', lw=0.9, label='y = x')
        top.set_xlim(limits)
        top.set_ylim(limits)
        top.set_aspect('equal', adjustable='box')
        what = {
            'energy': 'energy per atom',
            'forces': 'force components',
            'stress': 'stress components',
        }[prop]
        top.set_title(what.capitalize())
        top.set_xlabel(f'DFT {what} ({VALUE_UNITS[prop]})')
        top.set_ylabel(f'committee mean ({VALUE_UNITS[prop]})')
        top.grid(alpha=0.3)
        top.legend(loc='upper left', fontsize=7.5, framealpha=0.85, markerscale=10 / size**0.5)
        bottom.axvline(0.0, color='k', lw=0.8, ls='--')
        bottom.set_xlabel(f'error: predicted \N{MINUS SIGN} DFT ({RMSE_UNITS[prop]})')
        bottom.set_ylabel('count')
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7.5, loc='upper right')
    figure.suptitle('Committee mean against the DFT labels')
    return _save(figure, path)


# ----------------------------------------------------------------------------- calibration


def _calibration_dict(calibration: Any) -> dict[str, Any]:
    if calibration is None:
        return {}
    if hasattr(calibration, 'to_dict'):
        return dict(calibration.to_dict())
    if hasattr(calibration, 'get_dict'):  # an AiiDA Dict
        return dict(calibration.get_dict())
    return dict(calibration)


def _rates(
    delta: np.ndarray, eps: np.ndarray, tau: float, limit: float
) -> tuple[dict[str, int], float, float]:
    predicted, actual = delta > tau, eps > limit
    counts = {
        'tp': int(np.sum(predicted & actual)),
        'fp': int(np.sum(predicted & ~actual)),
        'fn': int(np.sum(~predicted & actual)),
        'tn': int(np.sum(~predicted & ~actual)),
    }
    tpr = counts['tp'] / (counts['tp'] + counts['fn']) if counts['tp'] + counts['fn'] else math.nan
    ppv = counts['tp'] / (counts['tp'] + counts['fp']) if counts['tp'] + counts['fp'] else math.nan
    return counts, tpr, ppv


def _given_entry(diagnostics: Mapping[str, Any] | None, prop: str) -> Mapping[str, Any] | None:
    """What a diagnostics report or a record says about ``prop``: rates, and counts if any.

    A report's ``at_thresholds`` entry (or a bare ``{prop: entry}``) carries the confusion
    counts of :func:`~aiida_trainspot.evaluation.calibration.classification_rates`; a record
    keeps only ``tpr``/``ppv`` by property.
    """
    if not diagnostics:
        return None
    entry = _get(diagnostics, 'at_thresholds', prop) or _get(diagnostics, prop)
    if isinstance(entry, Mapping) and ('tpr' in entry or 'ppv' in entry):
        return entry
    if isinstance(diagnostics.get('tpr'), Mapping) and prop in diagnostics['tpr']:  # a record
        return {'tpr': diagnostics['tpr'][prop], 'ppv': _get(diagnostics, 'ppv', prop)}
    return None


def _given_rates(diagnostics: Mapping[str, Any] | None, prop: str) -> tuple[float, float] | None:
    """(TPR, PPV) of ``prop`` from a diagnostics report or a record, if it has them."""
    entry = _given_entry(diagnostics, prop)
    if entry is None:
        return None
    return _number(entry.get('tpr')), _number(entry.get('ppv'))


def _count(value: Any) -> int | None:
    """A stored confusion count as an int; None when absent or not a whole number."""
    number = _number(value)
    if not math.isfinite(number) or number < 0 or number != round(number):
        return None
    return int(number)


def _same_rate(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _confusion_score(tp: int, fn: int, fp: int, n: int | None) -> dict[str, Any]:
    """Counts with the rates they give (NaN for 0/0), as :func:`_score` returns them."""
    return {
        'tp': tp,
        'fn': fn,
        'fp': fp,
        'n': n,
        'tpr': tp / (tp + fn) if tp + fn else math.nan,
        'ppv': tp / (tp + fp) if tp + fp else math.nan,
    }


def _score(
    entry: Mapping[str, Any] | None,
    counts: Mapping[str, int],
    n_scored: int,
) -> dict[str, Any]:
    """TPR, PPV and the counts behind them (``tp``, ``fn``, ``fp``, ``n``) for a panel's title.

    ``counts`` are those of the plotted frames (``n_scored`` of them). A given ``entry`` with
    confusion counts wins, with rates recomputed from them so text and fractions agree. An
    entry with rates only (a record, or a report written before counts were kept) is shown
    with the plotted frames' counts where its rates are theirs, else without counts
    (``tp`` etc. None) and with ``n`` unknown (None): a rate whose denominator nobody knows
    is not dressed up with a made-up one.
    """
    own = _confusion_score(counts['tp'], counts['fn'], counts['fp'], n_scored)
    if entry is None:
        return own
    stored = {key: _count(entry.get(key)) for key in ('tp', 'fn', 'fp', 'tn', 'n')}
    if None not in (stored['tp'], stored['fn'], stored['fp']):
        tp, fn, fp = stored['tp'], stored['fn'], stored['fp']
        n = stored['n']
        if n is None and stored['tn'] is not None:
            n = tp + fn + fp + stored['tn']
        return _confusion_score(tp, fn, fp, n)
    tpr, ppv = _number(entry.get('tpr')), _number(entry.get('ppv'))
    if _same_rate(tpr, own['tpr']) and _same_rate(ppv, own['ppv']):
        return own
    return {'tp': None, 'fn': None, 'fp': None, 'n': None, 'tpr': tpr, 'ppv': ppv}


def _score_text(score: Mapping[str, Any]) -> tuple[str, str]:
    """(rates with their fractions, a caveat line or '') of a :func:`_score`.

    E.g. ``('TPR 1.00 (3/3), PPV 0.75 (3/4)', 'only 5 frames scored (< 10): unreliable')``; the
    caveat is there because a rate from a handful of frames says little (3/3 is "1.00").
    """

    def part(name: str, rate: float, hits: int | None, missed: int | None) -> str:
        text = f'{name} {_rate(rate)}'
        return text if hits is None or missed is None else f'{text} ({hits}/{hits + missed})'

    rates = ', '.join(
        [
            part('TPR', score['tpr'], score['tp'], score['fn']),
            part('PPV', score['ppv'], score['tp'], score['fp']),
        ]
    )
    n = score['n']
    if n is None:
        return rates, '' if score['tp'] is not None else 'recorded rates; counts not stored'
    if n < MIN_SCORED:
        return rates, f'only {n} frame{"s" if n != 1 else ""} scored (< {MIN_SCORED}): unreliable'
    return rates, ''


def _zero_floor(values: np.ndarray, threshold: float) -> float:
    """Largest δ (or ε) that counts as zero: :data:`ZERO_FRACTION` of its threshold.

    Without a threshold, the same fraction of the largest value. Perfect crystals and isolated
    atoms give errors and disagreements of round-off size (1e-14 eV/Å), which on a log axis
    would stretch a panel over twelve decades and squeeze the informative points into a corner.
    """
    if math.isfinite(threshold) and threshold > 0:
        return ZERO_FRACTION * threshold
    finite = values[np.isfinite(values)]
    return ZERO_FRACTION * max(float(finite.max()), 0.0) if finite.size else 0.0


def _panel_thresholds(cal: Mapping[str, Any], prop: str) -> tuple[float, float, float]:
    """(slope a, threshold τ, tolerance ε_thr) of ``prop``; NaN where not calibrated."""
    slope = _number(_get(cal, 'slopes', prop))
    limit = _number(_get(cal, 'error_thresholds', prop))
    tau = _number(_get(cal, 'thresholds', prop))
    if not math.isfinite(tau) and math.isfinite(slope) and math.isfinite(limit):
        tau = slope * limit
    return slope, tau, limit


def _panel_axes(
    delta: np.ndarray, eps: np.ndarray, drawn: np.ndarray, tau: float, limit: float
) -> dict[str, Any]:
    """Scale, limits and the near-zero frames of one panel.

    Frames with ε or δ at most :func:`_zero_floor` are set aside (``eps_zero``,
    ``delta_zero``): the limits come from the other values and the threshold lines, and such
    frames are drawn on the axis instead. The axes are logarithmic when that leaves a positive
    value on each axis, else linear (then nothing is set aside).
    """
    eps_zero = drawn & (eps <= _zero_floor(eps[drawn], limit))
    delta_zero = drawn & (delta <= _zero_floor(delta[drawn], tau))
    xs = [*eps[drawn & ~eps_zero], *([limit] if math.isfinite(limit) else [])]
    ys = [*delta[drawn & ~delta_zero], *([tau] if math.isfinite(tau) else [])]
    log = any(x > 0 for x in xs) and any(y > 0 for y in ys)
    if not log:
        eps_zero = delta_zero = np.zeros_like(drawn)
        xs, ys = list(eps[drawn]), list(delta[drawn])
    return {
        'log': log,
        'xlim': _limits(xs, log),
        'ylim': _limits(ys, log, COUNT_MARGIN),
        'eps_zero': eps_zero,
        'delta_zero': delta_zero,
    }


def _draw_on_axes(
    ax: Any,
    axes: Mapping[str, Any],
    delta: np.ndarray,
    eps: np.ndarray,
    groups: Sequence[tuple[np.ndarray, Any]],
    max_points: int,
) -> int:
    """Draw the near-zero frames of each (mask, colour) group on the axes; return how many.

    ε ≈ 0 goes on the left axis, δ ≈ 0 on the bottom one (both: the corner, where they hide one
    another, so the legend says how many), as open diamonds; both lie below their thresholds,
    so the quadrant a frame is counted in stays the one it is drawn in.
    """
    zero = axes['eps_zero'] | axes['delta_zero']
    total = corner = 0
    for position, (mask, colour) in enumerate(groups):
        chosen = mask & zero
        if not chosen.any():
            continue
        total += int(chosen.sum())
        corner += int(np.sum(chosen & axes['eps_zero'] & axes['delta_zero']))
        shown = _thin(int(chosen.sum()), max_points, seed=position)
        x = np.where(axes['eps_zero'], axes['xlim'][0], eps)[chosen][shown]
        y = np.where(axes['delta_zero'], axes['ylim'][0], delta)[chosen][shown]
        ax.scatter(
            x,
            y,
            s=26,
            marker='D',
            facecolors='none',
            edgecolors=colour,
            lw=1.0,
            clip_on=False,
            zorder=4,
        )
    if total:
        ax.scatter(
            [],
            [],
            s=26,
            marker='D',
            facecolors='none',
            edgecolors='0.2',
            lw=1.0,
            label=f'{total} frame{"s" if total != 1 else ""} with ε or δ ≈ 0, on the axes'
            + (f'\n({corner} with both, on one another in the corner)' if corner > 1 else ''),
        )
    return total


def _draw_quadrant_counts(ax: Any, counts: Mapping[str, int]) -> None:
    box = {'boxstyle': 'round,pad=0.2', 'fc': 'white', 'ec': '0.8', 'alpha': 0.85}
    for key, (x, y, ha, va) in {
        'tp': (0.98, 0.98, 'right', 'top'),
        'fp': (0.02, 0.98, 'left', 'top'),
        'fn': (0.98, 0.02, 'right', 'bottom'),
        'tn': (0.02, 0.02, 'left', 'bottom'),
    }.items():
        ax.text(
            x,
            y,
            f'{key.upper()} {counts[key]}',
            transform=ax.transAxes,
            ha=ha,
            va=va,
            fontsize=8,
            color='0.3',
            bbox=box,
        )


def _calibration_panels(
    predictions: Any, kind: str
) -> tuple[np.ndarray, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """Split of every frame, and (property, δ, ε, valid) for each property with any pair."""
    names = set(predictions.column_names)
    props = [p for p in PROPERTIES if f'delta_{p}' in names and f'eps_{p}' in names]
    flags = ['non_finite'] if 'non_finite' in names else []
    wanted = [f'{k}_{p}' for p in props for k in ('delta', 'eps')] + ['split'] + flags
    columns = _read(predictions, wanted)
    # frames with a member's non-finite prediction are left out, as the calibration leaves them
    finite = ~np.asarray(columns.column('non_finite'), dtype=bool) if flags else True
    panels = []
    for prop in props:
        delta = np.asarray(columns.column(f'delta_{prop}'), dtype=float)
        eps = errors_of(kind, {prop: delta}, {prop: columns.column(f'eps_{prop}')})[prop]
        valid = _mask(columns, f'delta_{prop}') & _mask(columns, f'eps_{prop}')
        valid &= np.isfinite(delta) & np.isfinite(eps) & finite
        if valid.any():
            panels.append((prop, delta, eps, valid))
    return _split_names(columns), panels


def _draw_points(
    ax: Any,
    delta: np.ndarray,
    eps: np.ndarray,
    masks: tuple[np.ndarray, np.ndarray, np.ndarray],
    frame_splits: np.ndarray,
    max_points: int,
) -> list[tuple[np.ndarray, Any]]:
    """Scatter the plain frames: the ``used`` ones by split, the ``others`` in grey.

    ``masks`` is (used, others, plain), plain being the frames not set aside as near zero.

    :returns: the (mask, colour) groups, so that :func:`_draw_on_axes` draws their near-zero
        frames in the same colours.
    """
    used, others, plain = masks
    groups: list[tuple[np.ndarray, Any]] = []
    if others.any():
        groups.append((others, '0.6'))
        chosen = others & plain
        shown = _thin(int(chosen.sum()), max_points)
        ax.scatter(
            eps[chosen][shown],
            delta[chosen][shown],
            s=8,
            color='0.75',
            edgecolors='none',
            rasterized=True,
            label='not used (' + ', '.join(_split_order(frame_splits[others])) + ')',
        )
    for position, split in enumerate(_split_order(frame_splits[used])):
        colour = SPLIT_COLOURS.get(split, f'C{position + 3}')
        group = used & (frame_splits == split)
        groups.append((group, colour))
        chosen = group & plain
        shown = _thin(int(chosen.sum()), max_points, seed=position)
        ax.scatter(
            eps[chosen][shown],
            delta[chosen][shown],
            s=12,
            alpha=0.75,
            color=colour,
            edgecolors='none',
            rasterized=True,
            label=f'{split} (n={int(group.sum())})',
        )
    return groups


def _draw_calibration_lines(
    ax: Any, thresholds: tuple[float, float, float], panel: Mapping[str, Any], unit: str
) -> None:
    """The fitted line δ = a ε and the threshold lines τ and ε_thr, where they are known."""
    slope, tau, limit = thresholds
    if math.isfinite(slope) and slope > 0:
        xlim = panel['xlim']
        grid = np.geomspace(*xlim, 50) if panel['log'] else np.linspace(*xlim, 50)
        ax.plot(grid, slope * grid, color='k', lw=1.2, label=f'fit: δ = {slope:.3g} ε')
    if math.isfinite(tau):
        ax.axhline(tau, color='tab:red', ls='--', lw=1.1, label=f'τ = {tau:.3g} {unit}')
    if math.isfinite(limit):
        ax.axvline(limit, color='tab:purple', ls='--', lw=1.1, label=f'ε_thr = {limit:.3g} {unit}')


def _score_panel(
    ax: Any,
    prop: str,
    scored: tuple[np.ndarray, np.ndarray],
    thresholds: tuple[float, float, float],
    entry: Mapping[str, Any] | None,
    note: str,
) -> None:
    """Quadrant counts of the ``scored`` (δ, ε) and the title with TPR and PPV.

    The title turns grey, with a line that says why, when the rates rest on fewer than
    :data:`MIN_SCORED` frames.
    """
    delta, eps = scored
    _, tau, limit = thresholds
    colour, caveat = 'k', ''
    if math.isfinite(tau) and math.isfinite(limit):
        counts, _, _ = _rates(delta, eps, tau, limit)
        _draw_quadrant_counts(ax, counts)
        rates, caveat = _score_text(_score(entry, counts, int(delta.size)))
        title = f'{TITLES[prop]}: {rates}'
        if caveat.endswith('unreliable'):
            colour = '0.45'
    else:
        title = f'{TITLES[prop]}: not calibrated'
    subtitle = '; '.join(text for text in (note, caveat) if text)
    ax.set_title(title + (f'\n{subtitle}' if subtitle else ''), fontsize=10, color=colour)


def _label_calibration_axes(ax: Any, log: bool, kind: str, unit: str) -> None:
    if log:
        _short_log_labels(ax.xaxis)
        _short_log_labels(ax.yaxis)
    ax.set_xlabel(f'true error ε{ERROR_LABELS[kind]} ({unit})')
    ax.set_ylabel(f'disagreement δ ({unit})')
    ax.grid(alpha=0.3, which='major')
    ax.legend(
        loc='upper center',
        bbox_to_anchor=(0.5, -0.16),
        ncols=2,
        fontsize=7.5,
        frameon=False,
    )


def calibration_figure(
    predictions: Any,
    calibration: Any,
    diagnostics: Mapping[str, Any] | None = None,
    splits: Sequence[str] | None = None,
    max_points: int = MAX_POINTS,
) -> Any:
    """The figure of :func:`plot_calibration` (a matplotlib ``Figure``), None with no panel.

    Separate from the writing so that what a reader sees (limits, titles, legends) can be
    checked without decoding a PNG.
    """
    cal = _calibration_dict(calibration)
    kind = cal.get('error', LEGACY_ERROR_KIND)
    frame_splits, panels = _calibration_panels(predictions, kind)
    if not panels:
        return None
    if splits is None:
        splits = tuple((diagnostics or {}).get('splits') or CALIBRATION_SPLITS)
    figure = _figure(4.6 * len(panels), 5.3)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (prop, delta, eps, valid) in zip(axes, panels, strict=True):
        used = valid & np.isin(frame_splits, list(splits))
        note = ''
        if not used.any():
            used, note = valid, 'all labelled frames'
        thresholds = _panel_thresholds(cal, prop)
        panel = _panel_axes(delta, eps, valid, thresholds[1], thresholds[2])
        plain = ~(panel['eps_zero'] | panel['delta_zero'])
        masks = (used, valid & ~used, plain)
        groups = _draw_points(ax, delta, eps, masks, frame_splits, max_points)
        if panel['log']:
            ax.set_xscale('log')
            ax.set_yscale('log')
        ax.set_xlim(panel['xlim'])
        ax.set_ylim(panel['ylim'])
        _draw_on_axes(ax, panel, delta, eps, groups, max_points)
        _draw_calibration_lines(ax, thresholds, panel, VALUE_UNITS[prop])
        entry = _given_entry(diagnostics, prop)
        _score_panel(ax, prop, (delta[used], eps[used]), thresholds, entry, note)
        _label_calibration_axes(ax, panel['log'], kind, VALUE_UNITS[prop])
    title = 'Calibration: committee disagreement δ against true error ε'
    figure.suptitle(title if len(panels) > 1 else title.replace(' against', '\nagainst'))
    return figure


def plot_calibration(
    predictions: Any,
    calibration: Any,
    path: str | Path,
    diagnostics: Mapping[str, Any] | None = None,
    splits: Sequence[str] | None = None,
    max_points: int = MAX_POINTS,
) -> Path:
    """Disagreement δ against true error ε per property, with the calibration; write a PNG.

    One panel per property with ``delta_<property>`` and ``eps_<property>`` columns: the frames
    of ``splits`` (default: ``diagnostics['splits']``, else validation and test; all labelled
    frames when none is in those splits) coloured by split, the other labelled frames in grey;
    the fitted line δ = a·ε, the threshold τ (horizontal) and the tolerance ε_thr (vertical),
    dashed; the counts of each quadrant (TP: δ > τ and ε > ε_thr, ...). Axes are logarithmic;
    frames whose ε or δ is numerically zero (at most :data:`ZERO_FRACTION` of ε_thr or τ:
    perfect crystals, isolated atoms) are drawn as open diamonds on the axis, counted in the
    legend, and do not set the limits (see :func:`_panel_axes`). The title gives TPR and PPV
    with their fractions, e.g. "TPR 0.75 (3/4)", from ``diagnostics``
    (:func:`~aiida_trainspot.evaluation.calibration.diagnostics`, a report with
    ``at_thresholds`` or a record with ``tpr``/``ppv``) when given, else computed from the
    frames of ``splits``; with fewer than :data:`MIN_SCORED` frames scored it says so and is
    grey. ``calibration`` may be None (points only). ε is the error the calibration was fitted
    to (its ``error``: the committee mean's, or the members' RMS error
    :math:`\\sqrt{\\varepsilon^2 + \\delta^2}`).
    """
    figure = calibration_figure(predictions, calibration, diagnostics, splits, max_points)
    if figure is None:
        return _message(
            path, 'Calibration', 'no frame has both a disagreement δ and a true error ε'
        )
    return _save(figure, path)


def _limits(values: Sequence[float], log: bool, margin: float = 0.06) -> tuple[float, float]:
    """Axis limits around ``values`` with ``margin`` of their span (in decades on a log axis).

    The calibration's δ axis takes a wider margin (:data:`COUNT_MARGIN`) so that its extreme
    points stay clear of the quadrant counts in the corners.
    """
    array = np.asarray([v for v in values if np.isfinite(v) and (v > 0 or not log)], dtype=float)
    if array.size == 0:
        return (0.1, 10.0) if log else (0.0, 1.0)
    low, high = float(array.min()), float(array.max())
    if log:
        if high <= low:
            return low / 3, high * 3
        factor = (high / low) ** margin
        return low / factor, high * factor
    if low == high == 0.0:
        return 0.0, 1.0
    pad = margin * (high - low) if high > low else abs(high) * 0.1
    # non-negative values (errors, disagreements) start at zero
    return (0.0 if low >= 0 else low - pad), high + pad


# ----------------------------------------------------------------------------- composition


def plot_composition(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Labelled dataset by generation method (stacked bars) and frames selected, per iteration.

    Bars: ``dataset.by_generation_method`` of each record (frames in the labelled dataset after
    the iteration's training), total on top. Line on the right axis: ``selection.selected``, the
    frames the iteration chose for labelling (they join the dataset in the next iteration).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    records = _sorted_records(records)
    if not records:
        return _message(path, 'Labelled dataset', 'no iteration recorded yet')
    iterations = [int(r['iteration']) for r in records]
    compositions = [dict(_get(r, 'dataset', 'by_generation_method') or {}) for r in records]
    methods = sorted({m for c in compositions for m in c})
    figure = _figure(max(7.0, 0.55 * len(records) + 4.5), 4.6)
    ax = figure.add_subplot()
    x = np.array(iterations, dtype=float)
    bottom = np.zeros(len(records))
    colours = _method_colours(len(methods))
    handles: list[Any] = []
    for method, colour in zip(methods, colours, strict=True):
        counts = np.array([_number(c.get(method)) for c in compositions])
        counts = np.nan_to_num(counts)
        ax.bar(x, counts, bottom=bottom, width=0.7, color=colour, edgecolor='white', lw=0.5)
        handles.append(Patch(color=colour, label=method))
        bottom += counts
    totals = np.array([_number(_get(r, 'dataset', 'n_frames')) for r in records])
    totals = np.where(np.isfinite(totals), totals, bottom)
    for xi, total in zip(x, totals, strict=True):
        ax.annotate(
            f'{int(total)}',
            (xi, total),
            xytext=(0, 2),
            textcoords='offset points',
            ha='center',
            va='bottom',
            fontsize=8,
        )
    top = float(np.nanmax(totals)) if totals.size and np.isfinite(totals).any() else 1.0
    ax.set_ylim(0, max(top, 1.0) * 1.12)
    ax.set_ylabel('labelled frames (bars: by generation method)')
    ax.grid(alpha=0.3, axis='y')
    _integer_iterations(ax, iterations)
    selected = np.array([_number(_get(r, 'selection', 'selected')) for r in records])
    if np.isfinite(selected).any():
        twin = ax.twinx()
        twin.plot(x, selected, color='k', marker='D', ms=5, lw=1.5)
        twin.set_ylabel('frames selected for labelling')
        twin.set_ylim(0, max(float(np.nanmax(selected)), 1.0) * 1.15)
        from matplotlib.ticker import MaxNLocator

        twin.yaxis.set_major_locator(MaxNLocator(integer=True))
        handles.append(
            Line2D([], [], color='k', marker='D', ms=5, lw=1.5, label='selected (right axis)')
        )
    if not methods:
        ax.text(0.5, 0.5, 'no composition recorded', transform=ax.transAxes, ha='center')
    figure.legend(
        handles=handles, loc='outside lower center', ncols=min(len(handles), 5), frameon=False
    )
    figure.suptitle('Labelled dataset by generation method, and frames selected per iteration')
    return _save(figure, path)


def _method_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps['tab10' if n <= 10 else 'tab20']
    return [cmap(i % cmap.N) for i in range(n)]


# ----------------------------------------------------------------------------- all of them


def write_campaign_plots(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    predictions: Any = None,
    calibration: Any = None,
) -> list[Path]:
    """Write the campaign's figures into ``out_dir`` (created); return their paths.

    ``rmse.png`` and ``composition.png`` always; with ``predictions`` also ``parity.png`` and
    ``calibration.png``. Without ``calibration`` the calibration plot uses the last record's
    ``calibration`` entry (and its TPR/PPV are then computed from the points).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    paths = [
        plot_rmse_history(records, out / 'rmse.png'),
        plot_composition(records, out / 'composition.png'),
    ]
    if predictions is not None:
        if calibration is None and records:
            last = _sorted_records(records)[-1].get('calibration') or {}
            calibration = last if _get(last, 'slopes') else None
        paths.append(plot_parity(predictions, out / 'parity.png'))
        paths.append(plot_calibration(predictions, calibration, out / 'calibration.png'))
    return paths
