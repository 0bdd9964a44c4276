"""Workflow overhead of a finished TrainsPotWorkChain: wall time by stage, nodes per label.

Usage (on the profile that ran it, e.g. the carbon example's `.aiida`):

    AIIDA_PATH=.aiida .venv/bin/python benchmarks/bench_workflow_overhead.py PK [--json out.json]

Prints, per iteration, the wall time of each stage (from the creation to the last change of its
process node), the time spent inside the external codes (pw.x, mace_run_train, MD, evaluation
jobs, from their CalcJob nodes) and the AiiDA nodes the run created per labelled frame.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def stage_of(label: str) -> tuple[int, str]:
    """(iteration, stage) of a call link label such as ``iteration_02_training``."""
    if label.startswith('iteration_'):
        _, number, stage = label.split('_', 2)
        return int(number), stage
    return 0, label


def seconds(node) -> float:
    return (node.mtime - node.ctime).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pk', type=int)
    parser.add_argument('--json', default=None)
    args = parser.parse_args()

    from aiida import load_profile, orm
    from aiida.common.links import LinkType

    load_profile()
    node = orm.load_node(args.pk)
    table: dict[int, dict[str, float]] = defaultdict(dict)
    codes: dict[int, dict[str, float]] = defaultdict(dict)
    for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC)):
        iteration, stage = stage_of(link.link_label)
        child = link.node
        table[iteration][stage] = table[iteration].get(stage, 0.0) + seconds(child)
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
    print(f'TrainsPotWorkChain<{node.pk}>: {total:.0f} s wall, {n_labelled} labelled frames')
    print(f'{"iteration":>9} {"stage":<22} {"wall s":>8} {"jobs s (sum)":>12}')
    for iteration in sorted(table):
        for stage, wall in sorted(table[iteration].items(), key=lambda item: -item[1]):
            job = codes[iteration].get(stage)
            print(
                f'{iteration:>9} {stage:<22} {wall:>8.1f} {"" if job is None else f"{job:.1f}":>12}'
            )
    print(
        f'processes {report["processes"]}, data nodes created {report["data_nodes_created"]}, '
        f'nodes per labelled frame {report["nodes_per_labelled_frame"]}'
    )
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(report, handle, indent=1)


if __name__ == '__main__':
    main()
