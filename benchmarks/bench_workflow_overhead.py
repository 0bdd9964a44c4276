"""Workflow overhead of a TrainsPotWorkChain: wall time by stage, nodes per label, daemon CPU.

Usage (on the profile that ran it, e.g. the carbon example's `.aiida`):

    AIIDA_PATH=.aiida .venv/bin/python benchmarks/bench_workflow_overhead.py PK [--json out.json]

Prints, per iteration, the wall time of each stage (from the creation to the last change of its
process node), the time spent inside the external codes (pw.x, mace_run_train, MD, evaluation
jobs, from their CalcJob nodes) and the AiiDA nodes the run created per labelled frame.

With ``--watch`` (start it right after ``aiida-trainspot run --daemon CONFIG.yaml``), it samples
the CPU time of the daemon workers (their own, not the codes they launch) every second until the
run terminates, and reports the daemon CPU seconds spent in each iteration: what the AiiDA
machinery itself costs, next to the external codes, in all and within each stage's process.
``--png`` draws the stage times.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict


def stage_of(label: str) -> tuple[int, str]:
    """(iteration, stage) of a call link label such as ``iteration_02_training``."""
    if label.startswith('iteration_'):
        _, number, stage = label.split('_', 2)
        return int(number), stage
    return 0, label


def optional(value: float | None) -> str:
    return '' if value is None else f'{value:.1f}'


def seconds(node) -> float:
    return (node.mtime - node.ctime).total_seconds()


def daemon_workers() -> list:
    """The running ``verdi daemon worker`` processes (psutil)."""
    import psutil

    workers = []
    for process in psutil.process_iter(['cmdline']):
        command = process.info['cmdline'] or []
        if 'daemon' in command and 'worker' in command:
            workers.append(process)
    return workers


def watch_daemon_cpu(node, interval: float = 1.0) -> list[tuple[float, float]]:
    """(unix time, cumulative CPU seconds of the daemon workers) until ``node`` terminates.

    Workers that exit keep their last reading, so the sum never goes backwards.
    """
    import psutil

    last: dict[int, float] = {}
    samples = []
    while True:
        for process in daemon_workers():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            last[process.pid] = times.user + times.system
        samples.append((time.time(), sum(last.values())))
        if node.is_terminated:
            return samples
        time.sleep(interval)


def cpu_between(samples, start: float, stop: float) -> float:
    """Daemon CPU seconds spent between two unix times (linear between samples)."""
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    import numpy as np

    return float(np.interp(stop, times, values) - np.interp(start, times, values))


def iteration_starts(node) -> dict[int, float]:
    """Unix time at which each loop iteration (1, 2, ...) created its first process."""
    from aiida.common.links import LinkType

    starts: dict[int, float] = {}
    for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)):
        iteration, _ = stage_of(link.link_label)
        if iteration > 0:
            begin = link.node.ctime.timestamp()
            starts[iteration] = min(starts.get(iteration, begin), begin)
    return starts


def iteration_windows(
    starts: dict[int, float], run_start: float, run_end: float
) -> dict[int, tuple[float, float]]:
    """Consecutive windows that tile the run: 0 until the first iteration starts, then each
    iteration until the next one starts, the last one until the run ends (its wrap-up included).

    Steps outside the loop (augmentation, the final summary) have no iteration in their link
    label; windows by start time keep them from stretching a window over the whole run, so the
    windows' CPU seconds add up to the run's.
    """
    loop = sorted(starts)
    bounds = [run_start, *(starts[k] for k in loop), run_end]
    return {key: (bounds[i], bounds[i + 1]) for i, key in enumerate([0, *loop])}


def plot(report: dict, path: str) -> None:
    """Stacked bars: wall time of each stage per iteration."""
    import matplotlib
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout='constrained')
    axis = figure.subplots()
    iterations = sorted(report['stages'], key=int)
    stages = sorted({s for i in iterations for s in report['stages'][i]})
    bottom = [0.0] * len(iterations)
    colours = matplotlib.colormaps['tab20'].colors  # more stages than tab10 has colours
    for index, stage in enumerate(stages):
        values = [report['stages'][i].get(stage, 0.0) for i in iterations]
        colour = colours[index % len(colours)]
        axis.bar(iterations, values, bottom=bottom, label=stage, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if report.get('daemon_cpu_seconds'):
        cpu = [report['daemon_cpu_seconds'].get(i, 0.0) for i in iterations]
        axis.plot(iterations, cpu, 'ko-', label='daemon CPU (s)')
    axis.set_xlabel('iteration (0: before the loop)')
    axis.set_ylabel('seconds')
    axis.legend(fontsize=7)
    axis.set_title(f'TrainsPotWorkChain<{report["pk"]}>: {report["wall_seconds"]:.0f} s wall')
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pk', type=int)
    parser.add_argument('--json', default=None)
    parser.add_argument('--png', default=None)
    parser.add_argument(
        '--watch', action='store_true', help='sample the daemon CPU until the run terminates'
    )
    args = parser.parse_args()

    from aiida import load_profile, orm
    from aiida.common.links import LinkType

    load_profile()
    node = orm.load_node(args.pk)
    samples = watch_daemon_cpu(node) if args.watch else None
    table: dict[int, dict[str, float]] = defaultdict(dict)
    codes: dict[int, dict[str, float]] = defaultdict(dict)
    stage_cpu: dict[int, dict[str, float]] = defaultdict(dict)
    for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)):
        iteration, stage = stage_of(link.link_label)
        child = link.node
        table[iteration][stage] = table[iteration].get(stage, 0.0) + seconds(child)
        if samples:
            window = (child.ctime.timestamp(), child.mtime.timestamp())
            spent = cpu_between(samples, *window)
            stage_cpu[iteration][stage] = stage_cpu[iteration].get(stage, 0.0) + spent
        jobs = [child] if isinstance(child, orm.CalcJobNode) else []
        if isinstance(child, orm.WorkflowNode):
            jobs = [n for n in child.called_descendants if isinstance(n, orm.CalcJobNode)]
        if jobs:
            codes[iteration][stage] = sum(seconds(j) for j in jobs)
    descendants = node.called_descendants
    created = set()
    for process in [node, *descendants]:
        for link in process.base.links.get_outgoing(link_type=LinkType.CREATE):
            created.add(link.node.pk)
    n_labelled = len(node.outputs.dataset) if 'dataset' in node.outputs else 0
    total = seconds(node)
    report = {
        'pk': node.pk,
        'wall_seconds': round(total, 1),
        'stages': {str(k): {s: round(v, 1) for s, v in d.items()} for k, d in table.items()},
        'jobs_seconds': {str(k): {s: round(v, 1) for s, v in d.items()} for k, d in codes.items()},
        'processes': len(descendants) + 1,
        'data_nodes_created': len(created),
        'labelled_frames': n_labelled,
        'nodes_per_labelled_frame': round((len(created) + len(descendants) + 1) / n_labelled, 1)
        if n_labelled
        else None,
    }
    if samples:
        run_start, run_end = node.ctime.timestamp(), node.mtime.timestamp()
        windows = iteration_windows(iteration_starts(node), run_start, run_end)
        report['daemon_cpu_seconds'] = {
            str(k): round(cpu_between(samples, *window), 1) for k, window in windows.items()
        }
        report['daemon_cpu_seconds_by_stage'] = {
            str(k): {s: round(v, 1) for s, v in d.items()} for k, d in stage_cpu.items()
        }
        report['daemon_cpu_seconds_total'] = round(cpu_between(samples, run_start, run_end), 1)
        report['daemon_cpu_samples'] = [
            [round(t - run_start, 2), round(cpu, 2)] for t, cpu in samples
        ]
    print(f'TrainsPotWorkChain<{node.pk}>: {total:.0f} s wall, {n_labelled} labelled frames')
    print(f'{"iteration":>9} {"stage":<22} {"wall s":>8} {"jobs s (sum)":>12} {"daemon CPU s":>12}')
    for iteration in sorted(table):
        for stage, wall in sorted(table[iteration].items(), key=lambda item: -item[1]):
            job, cpu = codes[iteration].get(stage), stage_cpu[iteration].get(stage)
            print(
                f'{iteration:>9} {stage:<22} {wall:>8.1f} {optional(job):>12} {optional(cpu):>12}'
            )
    print(
        f'processes {report["processes"]}, data nodes created {report["data_nodes_created"]}, '
        f'nodes per labelled frame {report["nodes_per_labelled_frame"]}'
    )
    if samples:
        print(f'daemon CPU seconds per iteration: {report["daemon_cpu_seconds"]}')
        print(f'daemon CPU seconds in all: {report["daemon_cpu_seconds_total"]}')
    if args.png:
        plot(report, args.png)
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(report, handle, indent=1)


if __name__ == '__main__':
    main()
