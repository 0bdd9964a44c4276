"""Bounded concurrency for work chains that launch many independent processes.

A work chain keeps a queue of job keys in its context; each step harvests the
processes that terminated, submits new ones into the free slots and waits on the
oldest still running. Only terminated processes free a slot, so at most
``limit`` are ever in flight, and there is no batch barrier: every process that
finished meanwhile is harvested when the awaited one ends. Only AiiDA's public
awaitables are used, so the queue survives daemon restarts with the context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiida import orm
from aiida.engine import ToContext


def init_queue(ctx: Any, keys: list[str]) -> None:
    """Put ``keys`` (one per job) in the queue of ``ctx``."""
    ctx.pending = list(keys)
    ctx.inflight = []  # [key, pk] in submission order
    ctx.finished = {}  # key -> pk


def has_work(ctx: Any) -> bool:
    """Whether jobs are waiting or running."""
    return bool(ctx.pending or ctx.inflight)


def submit_and_wait(ctx: Any, limit: int, submit: Callable[[str], orm.ProcessNode]):
    """Harvest, refill up to ``limit`` with ``submit(key)``, and return what to wait on."""
    still = []
    for key, pk in ctx.inflight:
        if orm.load_node(pk).is_terminated:
            ctx.finished[key] = pk
        else:
            still.append([key, pk])
    while ctx.pending and len(still) < limit:
        key = ctx.pending.pop(0)
        still.append([key, submit(key).pk])
    ctx.inflight = still
    if still:
        return ToContext(oldest=orm.load_node(still[0][1]))
    return None
