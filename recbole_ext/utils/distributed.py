"""The process group of a data-parallel run, and the few collectives the rest of the package needs.

A run is distributed when it was started by ``torchrun`` (or anything that sets the same environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with ``WORLD_SIZE`` > 1. Every helper here is a
no-op, or returns its input, when no process group is active, so callers need no branch of their own.

Failures: every collective runs under ``init_process_group``'s timeout (``dist_timeout`` seconds), and an error of
a collective (a peer that died, a timeout) becomes one :class:`DistributedFailure` line instead of a hang or a
backend traceback.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

from recbole_ext.errors import UserError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedFailure(UserError):
    """A peer process of a distributed run failed or stopped answering: the whole run fails with this line."""

    mistake = False


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the run, as the launcher (torchrun) describes it."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_environment(environ=None) -> Launch | None:
    """The launcher's description of this process, or None when it is not one of several processes."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise UserError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers, got {[env.get(k) for k in _ENV[:3]]}",
                        fix="start distributed runs with torchrun --nproc_per_node=N run.py ...") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise UserError(f"RANK {rank} is outside 0..{world - 1}", fix="start distributed runs with torchrun")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise UserError(f"distributed run without {' and '.join(missing)}",
                        fix="start distributed runs with torchrun --nproc_per_node=N run.py ... (it sets them)")
    return Launch(rank, world, local)


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """True inside a process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def start(launch: Launch, backend: str, timeout_s: float) -> None:
    """Join the launcher's process group (idempotent); ``backend``: gloo (CPU) or nccl (CUDA)."""
    dist = _dist()
    if dist.is_initialized():
        return
    with failures_reported("joining the process group"):
        dist.init_process_group(backend=backend, init_method="env://", rank=launch.rank,
                                world_size=launch.world_size, timeout=timedelta(seconds=float(timeout_s)))


def stop() -> None:
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def failures_reported(what: str):
    """Turn a collective's failure (a dead peer, a timeout) into one :class:`DistributedFailure` line."""
    try:
        yield
    except DistributedFailure:
        raise
    except (RuntimeError, ValueError, ConnectionError, TimeoutError) as exc:
        if not _looks_distributed(exc):
            raise
        first = " ".join(str(exc).split())[:200]
        where = f"rank {rank()} of {world_size()}" if active() else "this process"
        raise DistributedFailure(
            f"distributed run failed while {what} ({where}): another process stopped or did not answer in time "
            f"({first})",
            fix="read the failing rank's own error above; dist_timeout (seconds) bounds how long ranks wait") \
            from None


def _looks_distributed(exc: BaseException) -> bool:
    dist = _dist()
    kinds = tuple(k for k in (getattr(dist, "DistError", None), getattr(dist, "DistBackendError", None)) if k)
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "store",
                                   "socket", "broken pipe", "process group"))


def all_gather_objects(obj, what: str = "gathering results") -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without a process group). Tensors should be on CPU."""
    if not active():
        return [obj]
    out = [None] * world_size()
    with failures_reported(what):
        _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj, what: str = "sharing a decision", src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    with failures_reported(what):
        _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor, what: str = "summing a value"):
    """``tensor`` summed over ranks, in place (and returned)."""
    if active():
        with failures_reported(what):
            _dist().all_reduce(tensor)
    return tensor


def broadcast_tensors(tensors, what: str = "sharing weights", src: int = 0) -> None:
    """Rank ``src``'s values of each dense tensor, in place on every rank (sparse tensors are skipped: the graphs
    every rank builds from the same data and seed)."""
    if not active():
        return
    with failures_reported(what):
        for t in tensors:
            if not t.is_sparse:
                _dist().broadcast(t.data, src=src)


def barrier(what: str = "waiting for the other processes") -> None:
    if active():
        with failures_reported(what):
            _dist().barrier()
