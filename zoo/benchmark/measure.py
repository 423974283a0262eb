"""How things are measured: timing statistics, interleaved timing, peak memory, FLOPs and memory traffic.

Time: the candidates of a group are timed interleaved, A, B, A, B, ..., so that drift (thermal, other
processes) hits all of them alike. Each gets its warmup calls first (torch.compile's compilation happens
there), then ``runs`` timed calls; rows report the median, quartiles and min/max.

Peak memory (column ``peak_step_alloc_mib``) is the peak of the bytes that torch's allocator handed out
during one untimed call, above what was live when the call began: weights, inputs and other resident
tensors are not counted, activations, workspaces, outputs and gradients are. On CUDA it is
``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the call; on the CPU it
is the running sum of the allocation and free events that ``torch.profiler`` records (``profile_memory``)
from c10's CPU allocator, which every CPU tensor goes through (buffers that libraries such as oneDNN
allocate themselves are not seen). Process RSS and tracemalloc do not see tensor memory faithfully.
"""
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .specs import BenchmarkError

__all__ = ['MEM_COLUMN', 'Timer', 'Stats', 'summarize', 'interleaved_times', 'peak_memory', 'memory_method',
           'count_flops', 'min_traffic_bytes', 'peak_bandwidth_gbps', 'machine_name']

MEM_COLUMN = 'peak_step_alloc_mib'

Timer = Callable[[], float]


@dataclass(frozen=True)
class Stats:
    median: float
    q1: float
    q3: float
    min: float
    max: float


def summarize(samples: Sequence[float]) -> Stats:
    """Median, quartiles (inclusive method: they stay inside the samples) and extremes."""
    if not samples:
        raise ValueError('summarize() needs at least one sample')
    if len(samples) == 1:
        q1 = q3 = samples[0]
    else:
        q1, _, q3 = statistics.quantiles(samples, n=4, method='inclusive')
    return Stats(statistics.median(samples), q1, q3, min(samples), max(samples))


def interleaved_times(
        steps: Sequence[Callable[[], Any]],
        runs: int,
        warmup: int = 1,
        timer: Timer = time.perf_counter,
        sync: Callable[[], None] = lambda: None,
) -> List[List[float]]:
    """Seconds per call of each step: all warmups first, then ``runs`` rounds of one timed call per step.

    ``sync`` waits for queued device work (``torch.cuda.synchronize``) before each clock read.
    """
    if runs < 1 or warmup < 0:
        raise BenchmarkError(f'runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})')
    for step in steps:
        for _ in range(warmup):
            step()
    sync()
    times: List[List[float]] = [[] for _ in steps]
    for _ in range(runs):
        for step, samples in zip(steps, times):
            start = timer()
            step()
            sync()
            samples.append(timer() - start)
    return times


def peak_memory(step: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated during one call of ``step`` above those live before it (see the module doc)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != 'cpu':
        raise BenchmarkError(f'peak memory is measured on cpu and cuda only, not {device.type}')
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def memory_method(device: torch.device) -> str:
    return 'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'torch.profiler cpu allocator events'


# FlopCounterMode (torch 2.14) counts SDPA's CUDA kernels but not its CPU flash kernel, which has the same
# leading arguments; without these a CPU run reports no FLOPs for attention
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
}


def count_flops(step: Callable[[], Any]) -> Optional[int]:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attentions in one call, or None if it
    ran none that FlopCounterMode has a formula for (e.g. a custom op)."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        step()
    return counter.get_total_flops() or None


def _tensor_bytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor))


def min_traffic_bytes(fn: Callable, tensors: Sequence[torch.Tensor], kwargs: Dict[str, Any], mode: str) -> int:
    """The compulsory memory traffic of one call: every input read and every output written once; in train
    mode also the output gradient read and every input gradient written. Achieved GB/s against it says how
    close a bandwidth-bound kernel comes to the memory system's limit."""
    with torch.no_grad():
        out_bytes = _tensor_bytes(fn(*tensors, **kwargs))
    in_bytes = _tensor_bytes(list(tensors))
    if mode == 'inference':
        return in_bytes + out_bytes
    return in_bytes + 2 * out_bytes + _tensor_bytes([t for t in tensors if t.requires_grad])


def peak_bandwidth_gbps(device: torch.device) -> Optional[float]:
    """A CUDA card's theoretical DRAM bandwidth, GB/s (double data rate x memory clock x bus width); None on CPU."""
    if device.type != 'cuda':
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, 'memory_clock_rate', 0), getattr(props, 'memory_bus_width', 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def machine_name(device: torch.device) -> str:
    """The hardware a measurement ran on: the CUDA card's name, or the CPU model and its core count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
    except OSError:
        pass
    return f'{name}, {os.cpu_count()} cores'
