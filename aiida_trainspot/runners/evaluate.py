"""``trainspot-evaluate CONFIG``: evaluate a committee of potentials on datasets of frames.

The executable of :class:`~aiida_trainspot.evaluation.calculation.EvaluationCalculation`
(``trainspot.evaluation``). ``CONFIG`` is a JSON file whose paths are all relative to the working
directory::

    {
      "members": [{"label": "member_0", "engine": "mace", "model": "models/member_0/x.model",
                   "extensions": null}, ...],
      "datasets": [{"name": "explored", "index": "datasets/explored.index.h5",
                    "output": "predictions/explored.h5"}, ...],
      "shards": "shards",
      "device": "cpu", "dtype": "float64", "batch_size": 1, "chunk_size": 1000,
      "calibration": null or Calibration.to_dict(),
      "metrics": "metrics.json"
    }

Every model is loaded once (:func:`aiida_trainspot.training.loader.load_calculator`); each dataset
(a dataset index and its shards, see :mod:`aiida_trainspot.data.store`) is read ``chunk_size``
frames at a time; every chunk goes through every member
(:func:`aiida_trainspot.evaluation.inference.predict_committee`). For each dataset the columns of
:func:`~aiida_trainspot.evaluation.inference.prediction_columns` are written as one shard to its
``output``; the metrics of every dataset (RMSE/MAE per split, disagreement distribution) go to
``metrics`` last, so a complete metrics file means a complete job. Files are written under a
temporary name and renamed, so a killed job leaves no truncated output. A one-line JSON report
(frames, seconds, frames/s, non-finite frames, dropped members) is printed last on stdout.

Non-finite predictions do not fail the job. A member's non-finite energy, force or stress on a
frame is stored as NaN for that member and frame, the frame's statistics use the other members,
and the frame is flagged (column ``non_finite``; ``metrics['non_finite_frames']``, by dataset,
the indices of the flagged frames; left out of the error metrics). A member non-finite on every
frame of every dataset is dropped: listed in ``metrics['dropped_members']``, left out of every
statistic and of the flags; its metrics are None. Both keys are always there (``[]``, ``{}``).
Every such event is reported on stdout by a line starting with ``NON-FINITE`` or
``MEMBER DROPPED``. With fewer than :data:`MIN_USABLE_MEMBERS` members left the job fails.

Imports no AiiDA. Exit status: 0 on success; 2 on wrong usage; 3 when a model cannot be loaded,
4 when an input cannot be read, 5 when a member's calculator raises on a frame or fewer than two
members are left (a line starting with ``MODEL LOAD FAILED``, ``INPUT UNREADABLE`` or
``INFERENCE FAILED`` on stderr says why).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiida_trainspot.common.runner import RunnerError, config_main, one_line, write_atomically
from aiida_trainspot.data.columns import STRUCTURE_COLUMNS, concatenate_columns
from aiida_trainspot.data.store import DatasetIndex, FrameStore, read_shard, write_shard
from aiida_trainspot.evaluation.calibration import Calibration
from aiida_trainspot.evaluation.disagreement import DISAGREEMENT_UNITS, METRIC_UNITS, PROPERTIES
from aiida_trainspot.evaluation.inference import (
    DISAGREEMENT_NAMES,
    EXIT_INFERENCE_FAILED,
    INFERENCE_FAILED,
    SPLIT_COLUMN,
    InferenceError,
    MetricsAccumulator,
    committee_predictions,
    disagreement_summary,
    predict_members,
    prediction_columns,
    reference_labels,
    split_column,
)
from aiida_trainspot.training.loader import load_calculator

PROG = 'trainspot-evaluate'
#: The keys the configuration must give.
CONFIG_KEYS = ('members', 'datasets')
DESCRIPTION = 'Evaluate a committee of potentials on datasets (see the module docstring).'

#: Members a committee needs after dropping those non-finite everywhere (the
#: ``MIN_MEMBERS`` of :mod:`aiida_trainspot.evaluation.calculation`, which imports AiiDA).
MIN_USABLE_MEMBERS = 2
NON_FINITE = 'NON-FINITE'
MEMBER_DROPPED = 'MEMBER DROPPED'


def load_members(config: dict[str, Any]) -> list[Any]:
    """One ASE calculator per member, loaded once."""
    calculators = []
    for member in config['members']:
        try:
            calculators.append(
                load_calculator(
                    member['engine'],
                    member['model'],
                    device=config.get('device', 'cpu'),
                    dtype=config.get('dtype', 'float64'),
                    extensions_dir=member.get('extensions'),
                )
            )
        except Exception as exc:
            raise RunnerError.model_load_failed(f'{member["label"]}: {one_line(exc)}') from exc
    return calculators


@dataclass
class DatasetResult:
    """What :func:`evaluate_dataset` leaves for the end of the job.

    ``metrics`` (the dataset's entry of ``metrics.json`` but ``splits`` and the non-finite
    counts, which wait for the dropped members), ``accumulator`` (its error metrics),
    ``finite`` (F, M) whether each member's prediction of each frame is finite, and
    ``problems`` (member -> [(frame, what)]) the non-finite predictions.
    """

    metrics: dict[str, Any]
    accumulator: MetricsAccumulator
    finite: np.ndarray
    problems: dict[int, list[tuple[int, str]]]


def evaluate_dataset(
    entry: dict[str, Any],
    shards: Path,
    calculators: Sequence[Any],
    labels: Sequence[str],
    *,
    batch_size: int,
    chunk_size: int,
    calibration: Calibration | None,
) -> DatasetResult:
    """Evaluate one dataset; write its predictions shard; return its metrics and flags.

    The shard's ``non_finite`` column counts every member; :func:`run` rewrites it when a
    member is dropped.
    """
    name = entry['name']
    try:
        index = DatasetIndex.from_file(entry['index'])
        store = FrameStore(index, lambda shard: str(shards / f'{shard}.h5'))
        wanted = [c for c in (*PROPERTIES, SPLIT_COLUMN) if c in index.columns]
        missing = [c for c in STRUCTURE_COLUMNS if c not in index.columns]
        if missing:
            raise ValueError(f'the dataset has no {missing} columns')
    except Exception as exc:
        raise RunnerError.input_failed(f'{name}: {one_line(exc)}') from exc
    accumulator = MetricsAccumulator(len(calculators))
    parts = []
    deltas: dict[str, list[np.ndarray]] = {key: [] for key in DISAGREEMENT_NAMES}
    n_labelled = dict.fromkeys(PROPERTIES, 0)
    n_stress = 0
    finite: list[np.ndarray] = []
    problems: dict[int, list[tuple[int, str]]] = {}
    with store:
        chunks = store.iter_chunks(chunk_size, wanted)
        while True:
            try:
                start, columns = next(chunks)
            except StopIteration:
                break
            except Exception as exc:
                raise RunnerError.input_failed(f'{name}: {one_line(exc)}') from exc
            try:
                members = predict_members(calculators, columns, batch_size=batch_size)
            except InferenceError as exc:
                detail = (
                    f'dataset {name}, frame {start + exc.frame}, member {labels[exc.member]}: '
                    f'{exc.reason}'
                )
                raise RunnerError(INFERENCE_FAILED, EXIT_INFERENCE_FAILED, detail) from exc
            for member, prediction in enumerate(members):
                for frame, what in prediction.problems.items():
                    problems.setdefault(member, []).append((start + frame, what))
            predictions = committee_predictions(members, columns)
            finite.append(predictions.member_finite().T)
            reference = reference_labels(columns)
            accumulator.add(predictions, reference, split_column(columns))
            part = prediction_columns(predictions, reference, calibration)
            parts.append(part)
            for key in DISAGREEMENT_NAMES:
                deltas[key].append(part.frame[key])
            if reference is not None:
                for prop in PROPERTIES:
                    n_labelled[prop] += int(reference.mask(prop).sum())
            n_stress += int(predictions.stress_present().sum())
    output = concatenate_columns(parts)
    write_atomically(Path(entry['output']), lambda path: write_shard(output, str(path)))
    metrics = {
        'n_frames': int(output.n_frames),
        'n_atoms': int(output.n_atoms.sum()),
        'n_labelled': n_labelled,
        'n_stress_predicted': n_stress,
        'disagreement': disagreement_summary(
            {k: np.concatenate(v) if v else np.zeros(0) for k, v in deltas.items()}, calibration
        ),
    }
    finite_matrix = (
        np.concatenate(finite) if finite else np.zeros((0, len(calculators)), dtype=bool)
    )
    return DatasetResult(metrics, accumulator, finite_matrix, problems)


def _rewrite_flags(path: Path, flags: np.ndarray) -> None:
    """Replace the ``non_finite`` column of the predictions shard at ``path``."""
    columns = read_shard(str(path))
    columns.frame['non_finite'] = flags
    write_atomically(path, lambda target: write_shard(columns, str(target)))


def _report_non_finite(
    results: dict[str, DatasetResult], labels: Sequence[str], dropped: Sequence[int]
) -> None:
    """One stdout line per member and dataset with non-finite predictions, one per drop."""
    for name, result in results.items():
        for member, events in sorted(result.problems.items()):
            frame, what = events[0]
            print(
                f'{NON_FINITE}: member {labels[member]} on {len(events)} of '
                f'{result.finite.shape[0]} frames of dataset {name} (first: frame {frame}, '
                f'{what})',
                flush=True,
            )
    for member in dropped:
        print(
            f'{MEMBER_DROPPED}: {labels[member]} predicted non-finite values on every frame of '
            'every dataset; it is left out of the committee',
            flush=True,
        )


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every dataset of ``config``; write the outputs; return the report."""
    labels = [member['label'] for member in config['members']]
    try:
        calibration = None
        if config.get('calibration'):
            calibration = Calibration.from_dict(config['calibration'])
        batch_size = int(config.get('batch_size', 1))
        chunk_size = int(config.get('chunk_size', 1000))
        shards = Path(config.get('shards', 'shards'))
    except Exception as exc:
        raise RunnerError.input_failed(f'config: {one_line(exc)}') from exc
    start = time.perf_counter()
    calculators = load_members(config)
    load_seconds = time.perf_counter() - start
    results: dict[str, DatasetResult] = {}
    timing = {}
    for entry in config['datasets']:
        begin = time.perf_counter()
        results[entry['name']] = evaluate_dataset(
            entry,
            shards,
            calculators,
            labels,
            batch_size=batch_size,
            chunk_size=chunk_size,
            calibration=calibration,
        )
        seconds = time.perf_counter() - begin
        n_frames = results[entry['name']].metrics['n_frames']
        timing[entry['name']] = {
            'n_frames': n_frames,
            'seconds': round(seconds, 3),
            'frames_per_second': round(n_frames / seconds, 3) if seconds > 0 else None,
        }
    finite_anywhere = np.zeros(len(labels), dtype=bool)
    for result in results.values():
        finite_anywhere |= result.finite.any(axis=0)
    dropped = np.flatnonzero(~finite_anywhere).tolist()
    usable = np.flatnonzero(finite_anywhere).tolist()
    _report_non_finite(results, labels, dropped)
    if len(usable) < MIN_USABLE_MEMBERS:
        raise RunnerError(
            INFERENCE_FAILED,
            EXIT_INFERENCE_FAILED,
            f'members {[labels[m] for m in dropped]} predicted non-finite values on every frame '
            f'of every dataset, which leaves {[labels[m] for m in usable]}; a committee needs '
            f'at least {MIN_USABLE_MEMBERS}',
        )
    non_finite_frames = {}
    datasets = {}
    for entry in config['datasets']:
        name = entry['name']
        result = results[name]
        flags = ~result.finite[:, usable].all(axis=1)
        if dropped:
            _rewrite_flags(Path(entry['output']), flags)
        if flags.any():
            non_finite_frames[name] = np.flatnonzero(flags).tolist()
        datasets[name] = {
            **result.metrics,
            'n_non_finite': int(flags.sum()),
            'non_finite_members': {
                labels[m]: len(events) for m, events in sorted(result.problems.items())
            },
            'splits': result.accumulator.to_dict(usable),
        }
        timing[name]['n_non_finite'] = int(flags.sum())
    metrics = {
        'members': labels,
        'dropped_members': [labels[m] for m in dropped],
        'non_finite_frames': non_finite_frames,
        'engine': config['members'][0]['engine'] if config['members'] else None,
        'device': config.get('device', 'cpu'),
        'dtype': config.get('dtype', 'float64'),
        'batch_size': batch_size,
        'units': dict(METRIC_UNITS),
        'disagreement_units': dict(DISAGREEMENT_UNITS),
        'calibration': calibration.to_dict() if calibration is not None else None,
        'datasets': datasets,
    }
    write_atomically(
        Path(config.get('metrics', 'metrics.json')),
        lambda path: path.write_text(json.dumps(metrics, indent=1, sort_keys=True)),
    )
    return {
        'load_seconds': round(load_seconds, 3),
        'datasets': timing,
        'dropped_members': metrics['dropped_members'],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; return the exit status (console scripts ``sys.exit`` it)."""
    return config_main(argv, run, prog=PROG, description=DESCRIPTION, required=CONFIG_KEYS)


if __name__ == '__main__':
    sys.exit(main())
