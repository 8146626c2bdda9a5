"""Running as one of several processes started by ``accelerate launch``.

accelerate's :class:`~accelerate.PartialState` reads what the launcher put in the environment
(rank, world size, backend: gloo on CPUs, nccl on GPUs) and opens the process group once; a
plain ``python`` run is a world of one process, where every function here is a no-op. Training
and evaluation need only these few collectives, so they are gathered here rather than spread
over the models.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

T = TypeVar("T")


def state() -> PartialState:
    """The process's place in the launch (a singleton: the process group is opened once).

    accelerate starts N processes on CPUs only through MPI (``--cpu --mpirun_hostfile``); its
    torchrun path (``--multi_gpu``, or torchrun itself) starts them anywhere, but on a machine
    without a GPU accelerate then sees N unrelated processes unless told they are CPU ones: so
    it is told here, and their group is gloo.
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if PartialState._shared_state == {}:
        if _alone_under_cpu_launch():
            warnings.warn(
                "accelerate launch --cpu starts several processes only through MPI (--mpirun_hostfile); "
                "this is one process: launch with --multi_gpu --num_processes N (torchrun; gloo on CPUs)",
                stacklevel=2,
            )
        return PartialState(cpu=several and not torch.cuda.is_available())
    return PartialState()


def _alone_under_cpu_launch() -> bool:
    """``accelerate launch --cpu --num_processes N`` without MPI: it sets the rendezvous address
    for N processes but starts one, with no rank of any launcher."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return cpu and "MASTER_ADDR" in os.environ and not any(k in os.environ for k in _RANK_VARIABLES)


# What the launchers accelerate knows set in each process they start.
_RANK_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def shard_on_cpus(accelerator) -> None:
    """Honour an FSDP launch between CPU processes; call it on a new ``Accelerator``, before
    ``prepare``.

    ``accelerate launch`` with an FSDP config file tells every process to shard
    (``ACCELERATE_USE_FSDP``), but accelerate switches to FSDP only on GPU-like devices: between
    CPU processes it silently trains plain data-parallel instead. torch's FSDP2 (``fully_shard``)
    runs on CPUs over gloo, so the state accelerate built is marked FSDP here, with the plugin it
    reads from the environment, as it is on GPUs. FSDP1 wants a device per process on CPUs too
    (accelerate hands it ``cpu:0`` as its device id, which it refuses): it is refused here.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc_state = accelerator.state
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    if not asked or acc_state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP between CPU processes needs fsdp_version: 2 in the accelerate config file")
    if acc_state.mixed_precision != "no":
        plugin.set_mixed_precision(acc_state.mixed_precision)
    acc_state.fsdp_plugin = plugin
    acc_state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate records it


def launched() -> bool:
    """Whether a launcher started this process (torchrun, accelerate, MPI), even as one of one."""
    return PartialState._shared_state != {} or any(k in os.environ for k in (*_RANK_VARIABLES, "MASTER_ADDR"))


def world_size() -> int:
    # A plain run never touches accelerate's state, which a later Accelerator(cpu=True) could
    # then not change.
    return state().num_processes if launched() else 1


def rank() -> int:
    return state().process_index if launched() else 0


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0; the only process of a plain run)."""
    return rank() == 0


def gather(value: T) -> list[T]:
    """``value`` of every process, in rank order (every process gets the whole list)."""
    if world_size() == 1:
        return [value]
    # accelerate's gather_object concatenates lists, so each value travels inside one.
    return gather_object([value])


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every process: one decision, taken once."""
    if world_size() == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the processes, in place (also returned)."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its sum over the processes, in one collective.

    What DistributedDataParallel does, for networks trained through their submodules (embedding
    lookups, an item table) rather than one ``forward``, which DDP's hooks need. A parameter
    without a gradient on some process counts as zero there; one without a gradient anywhere
    keeps none, so the optimiser skips it as a one-process run would.
    """
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    all_sum(has)
    live = [p for p, n in zip(params, has.tolist()) if n > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in live])  # one buffer: one collective
    all_sum(flat)
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def shard(n: int, unit: int = 1) -> range:
    """The indices of ``range(n)`` this process handles: whole blocks of ``unit`` consecutive
    indices, contiguous per process and in rank order, so gathering in rank order restores the
    one-process order (a process may get none when there are fewer blocks than processes)."""
    blocks = -(-n // unit)
    size, here = world_size(), rank()
    first, last = here * blocks // size, (here + 1) * blocks // size
    return range(min(first * unit, n), min(last * unit, n))


__all__ = [
    "all_sum", "broadcast", "gather", "is_main", "launched", "rank", "shard", "shard_on_cpus", "state", "sum_gradients", "world_size",
]  # fmt: skip
