"""Throughput, latency, peak memory, parameters and FLOPs of models and kernels, beside their anchors.

One harness for both:

* models: a zoo or timm name (``zoo_van_b0``, ``timm:mambaout_femto``) or an import path to a callable
  that returns an ``nn.Module`` (``pkg.mod:factory``), in ``inference`` or ``train`` mode (forward +
  backward, no optimizer), on inputs of the model's ``in_chans`` at each requested resolution;
* kernels: an op by import path (``torch.nn.functional:scaled_dot_product_attention``) called on random
  tensors from an input spec, forward (``inference``) or forward + backward (``train``).

Everything measured in one call runs in one process, and the candidates of a group (a model or kernel
and its anchors) are timed interleaved, A, B, A, B, ..., so that drift (thermal, other processes) hits
all of them alike. Each candidate gets warmup calls first (torch.compile's compilation happens there),
then ``runs`` timed calls; rows report the median, quartiles and min/max.

Peak memory (column ``peak_step_alloc_mib``) is the peak of the bytes that torch's allocator handed out
during one untimed call, above what was live when the call began: weights, inputs and other resident
tensors are not counted, activations, workspaces, outputs and gradients are. On CUDA it is
``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the call; on the CPU it
is the running sum of the allocation and free events that ``torch.profiler`` records (``profile_memory``)
from c10's CPU allocator, which every CPU tensor goes through (buffers that libraries such as oneDNN
allocate themselves are not seen). Process RSS and tracemalloc do not see tensor memory faithfully.
"""
import importlib
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import zoo

__all__ = [
    'DTYPES', 'MODES', 'BenchmarkError', 'Stats', 'summarize', 'interleaved_times', 'peak_memory', 'count_flops',
    'resolve_callable', 'create_model', 'default_anchors', 'expand_models', 'parse_shape', 'load_input_spec',
    'KernelCase', 'load_case', 'min_traffic_bytes', 'peak_bandwidth_gbps',
    'check_device_dtype', 'benchmark_models', 'benchmark_kernel', 'write_csv', 'write_markdown', 'write_plot',
]

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
MODES = ('inference', 'train')
TIMM_PREFIX = 'timm:'
MEM_COLUMN = 'peak_step_alloc_mib'

Timer = Callable[[], float]

_logger = logging.getLogger(__name__)


class BenchmarkError(ValueError):
    """A request the harness cannot run; the message names what is wrong and what is allowed."""


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


def resolve_callable(path: str) -> Callable:
    """``'pkg.module:attr.sub'`` -> the object."""
    module_name, sep, attr = path.partition(':')
    if not sep or not module_name or not attr:
        raise BenchmarkError(f'bad import path {path!r}; expected module.sub:callable')
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise BenchmarkError(f'cannot import module {module_name!r} of {path!r}: {e}') from None
    for part in attr.split('.'):
        if not hasattr(obj, part):
            raise BenchmarkError(f'module {module_name!r} has no attribute {attr!r} (from {path!r})')
        obj = getattr(obj, part)
    if not callable(obj):
        raise BenchmarkError(f'{path!r} is not callable')
    return obj


def _model_error(spec: str) -> BenchmarkError:
    return BenchmarkError(
        f'unknown model {spec!r}; expected a zoo model ({", ".join(zoo.list_models()[:3])}, ... or a pattern '
        f'like zoo_van_*), timm:<timm model name> or module.sub:callable')


def _check_model(spec: str) -> None:
    if spec.startswith(TIMM_PREFIX):
        if not timm.is_model(spec[len(TIMM_PREFIX):]):
            raise _model_error(spec)
    elif ':' in spec:
        resolve_callable(spec)
    elif not timm.is_model(spec):
        raise _model_error(spec)


def create_model(spec: str, **kwargs) -> torch.nn.Module:
    """A model from a registered name (zoo or timm), ``timm:<name>`` or ``module.sub:callable``."""
    _check_model(spec)
    if spec.startswith(TIMM_PREFIX):
        return timm.create_model(spec[len(TIMM_PREFIX):], **kwargs)
    if ':' in spec:
        model = resolve_callable(spec)(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise BenchmarkError(f'{spec!r} returned {type(model).__name__}, expected a torch.nn.Module')
        return model
    return timm.create_model(spec, **kwargs)


def expand_models(specs: Sequence[str]) -> List[str]:
    """Expand shell patterns over the zoo's names (``zoo_*``, ``zoo_van_b[01]``); check every name."""
    names = []
    for spec in specs:
        if any(c in spec for c in '*?[') and ':' not in spec:
            matched = zoo.list_models(spec)
            if not matched:
                raise BenchmarkError(
                    f'pattern {spec!r} matches no zoo model; the zoo has {", ".join(zoo.list_models())}')
            names.extend(matched)
        else:
            _check_model(spec)
            names.append(spec)
    return names


def default_anchors(spec: str) -> List[str]:
    """timm's own model for a zoo model that re-registers one (zoo_mambaout_femto -> timm:mambaout_femto)."""
    prefix = zoo.ZOO_PREFIX
    if spec.startswith(prefix) and timm.is_model(spec[len(prefix):]):
        return [TIMM_PREFIX + spec[len(prefix):]]
    return []


def check_device_dtype(device: str, dtype: str) -> Tuple[torch.device, torch.dtype]:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BenchmarkError(f'bad device {device!r}; allowed: cpu, cuda, cuda:<index>') from None
    if dtype not in DTYPES:
        raise BenchmarkError(f'unknown dtype {dtype!r}; allowed: {", ".join(DTYPES)}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise BenchmarkError(
                f'device {device!r} is not available (torch.cuda.is_available() is False); allowed: cpu')
        if dtype == 'bf16' and not torch.cuda.is_bf16_supported():
            raise BenchmarkError(
                f'dtype bf16 is not supported on {torch.cuda.get_device_name(dev)}; allowed: fp32, fp16')
    elif dev.type == 'cpu':
        if dtype == 'fp16':
            raise BenchmarkError('dtype fp16 is not benchmarked on cpu (CPUs mostly emulate fp16 arithmetic); '
                                 'allowed on cpu: fp32, bf16')
    else:
        raise BenchmarkError(f'unsupported device {device!r}; allowed: cpu, cuda, cuda:<index>')
    return dev, DTYPES[dtype]


def parse_shape(text: str) -> Tuple[str, Dict[str, Any]]:
    """``'q=2,4,56,32'`` or ``'q=2,4,56,32:bf16'`` -> ``('q', {'shape': [2, 4, 56, 32], 'dtype': 'bf16'})``."""
    example = 'expected NAME=D0,D1,...[:DTYPE], e.g. q=2,4,56,32 or q=2,4,56,32:bf16'
    name, sep, rest = text.partition('=')
    dims, _, dtype = rest.partition(':')
    try:
        shape = [int(d) for d in dims.split(',')]
    except ValueError:
        raise BenchmarkError(f'bad shape {text!r}: {example}') from None
    if not sep or not name.isidentifier() or any(d < 0 for d in shape):
        raise BenchmarkError(f'bad shape {text!r}: {example}')
    if dtype and dtype not in DTYPES:
        raise BenchmarkError(f'bad shape {text!r}: unknown dtype {dtype!r}; allowed: {", ".join(DTYPES)}')
    return name, dict(shape=shape, dtype=dtype or None)


def load_input_spec(path: str) -> Dict[str, Any]:
    """A kernel's arguments from a YAML (or JSON) mapping, in call order: a list is a tensor's shape, a
    mapping with ``shape`` (and optional ``dtype``, ``requires_grad``) a tensor, anything else a keyword
    argument passed as is, e.g. ``{q: [2, 4, 56, 32], k: [2, 4, 56, 32], v: [2, 4, 56, 32], is_causal: true}``."""
    import yaml
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise BenchmarkError(f'cannot read input spec {path!r}: {e}') from None
    if not isinstance(spec, dict):
        raise BenchmarkError(f'input spec {path!r} must be a mapping of argument name to shape, tensor or value')
    return {k: dict(shape=v) if isinstance(v, list) else v for k, v in spec.items()}


@dataclass
class KernelCase:
    """A kernel benchmark case: the candidate, its anchors, the inputs, and the modes and device it is for."""
    kernel: str
    anchors: List[str]
    inputs: Dict[str, Any]
    modes: List[str]
    device: str


def load_case(path: str) -> KernelCase:
    """A kernel benchmark case from YAML: ``kernel`` (import path), optional ``anchors`` (import paths),
    ``inputs`` (as :func:`load_input_spec`), ``modes`` (default both: inference and train; a case whose
    anchor is impractical in train mode lists ``[inference]``), ``device`` (default cpu; ``cuda`` for the
    Triton cases) and ``description`` (free text for the reader). Other keys are refused."""
    import yaml
    try:
        with open(path) as f:
            case = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise BenchmarkError(f'cannot read case {path!r}: {e}') from None
    allowed = {'kernel', 'anchors', 'inputs', 'modes', 'device', 'description'}
    if not isinstance(case, dict) or not {'kernel', 'inputs'} <= set(case):
        raise BenchmarkError(f'case {path!r} must be a mapping with keys kernel and inputs (optional: anchors, '
                             'modes, device, description)')
    unknown = sorted(set(case) - allowed)
    if unknown:
        raise BenchmarkError(f'case {path!r} has unknown keys {unknown}; allowed: {sorted(allowed)}')
    anchors = case.get('anchors') or []
    if isinstance(anchors, str):
        anchors = [anchors]
    inputs = case['inputs']
    if not isinstance(case['kernel'], str) or not all(isinstance(a, str) for a in anchors):
        raise BenchmarkError(f'case {path!r}: kernel and anchors are import paths like module.sub:function')
    if not isinstance(inputs, dict):
        raise BenchmarkError(f'case {path!r}: inputs must be a mapping of argument name to shape, tensor or value')
    modes = case.get('modes', list(MODES))
    if isinstance(modes, str):
        modes = [modes]
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise BenchmarkError(f'case {path!r}: modes must be a non-empty list of {", ".join(MODES)}, got {modes!r}')
    device = case.get('device', 'cpu')
    if device not in ('cpu', 'cuda'):
        raise BenchmarkError(f'case {path!r}: device must be cpu or cuda, got {device!r}')
    return KernelCase(case['kernel'], list(anchors), {k: dict(shape=v) if isinstance(v, list) else v
                                                      for k, v in inputs.items()}, modes, device)


def _is_tensor_spec(value: Any) -> bool:
    return isinstance(value, dict) and 'shape' in value


def _make_inputs(
        spec: Mapping[str, Any], device: torch.device, dtype: torch.dtype, requires_grad: bool,
) -> Tuple[List[torch.Tensor], Dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    tensors, kwargs = [], {}
    for name, value in spec.items():
        if not _is_tensor_spec(value):
            kwargs[name] = value
            continue
        t_dtype = DTYPES[value['dtype']] if value.get('dtype') else dtype
        t = torch.randn(value['shape'], generator=generator).to(device=device, dtype=t_dtype)
        t.requires_grad_(requires_grad and value.get('requires_grad', True) and t.is_floating_point())
        tensors.append(t)
    return tensors, kwargs


def _backward(out: Any) -> None:
    outs = [t.sum() for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not outs:
        raise BenchmarkError('train mode needs an output that requires grad')
    torch.autograd.backward(outs)


def _model_step(model: Callable, x: torch.Tensor, params: Sequence[torch.nn.Parameter], mode: str) -> Callable:
    if mode == 'inference':
        def step():
            with torch.inference_mode():
                model(x)
    else:
        def step():
            _backward(model(x))
            # freed inside the call so the memory measurement sees the gradients' whole life
            for p in params:
                p.grad = None
    return step


def _kernel_step(fn: Callable, tensors: List[torch.Tensor], kwargs: Dict[str, Any], mode: str) -> Callable:
    if mode == 'inference':
        def step():
            with torch.inference_mode():
                fn(*tensors, **kwargs)
    else:
        def step():
            _backward(fn(*tensors, **kwargs))
            for t in tensors:
                t.grad = None
    return step


@dataclass
class _Candidate:
    name: str
    role: str
    step: Callable[[], Any]
    eager_step: Callable[[], Any]
    items: int
    params: Optional[int]


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


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise BenchmarkError(f'unknown mode {mode!r}; allowed: {", ".join(MODES)}')


def _measure(
        group: str, candidates: List[_Candidate], device: torch.device, runs: int, warmup: int, timer: Timer,
        compile: Optional[str], extra: Dict[str, Any], unit: str,
) -> List[Dict[str, Any]]:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    # compilation happens on the first call; it must land in warmup, never in a timed run
    warmup = max(warmup, 1) if compile else warmup
    what = f'{extra["resolution"]}px' if extra['kind'] == 'model' else extra['inputs']
    _logger.info(f'measuring {", ".join(c.name for c in candidates)} at {what}')
    times = interleaved_times([c.step for c in candidates], runs, warmup, timer, sync)
    rows = []
    for c, samples in zip(candidates, times):
        stats = summarize(samples)
        flops = count_flops(c.eager_step)
        rows.append(dict(
            name=c.name, role=c.role, group=group, **extra, device=str(device), compile=compile or '',
            runs=runs, warmup=warmup,
            throughput=c.items / stats.median, unit=unit,
            latency_ms_median=stats.median * 1e3, latency_ms_q1=stats.q1 * 1e3, latency_ms_q3=stats.q3 * 1e3,
            latency_ms_min=stats.min * 1e3, latency_ms_max=stats.max * 1e3,
            **{MEM_COLUMN: peak_memory(c.step, device) / 2 ** 20}, mem_method=memory_method(device),
            params_m=None if c.params is None else c.params / 1e6,
            gflops=None if flops is None else flops / c.items / 1e9,
        ))
    peak_gbps = peak_bandwidth_gbps(device)
    for row in rows:
        row['rel_throughput'] = row['throughput'] / rows[0]['throughput']
        if extra.get('traffic_bytes') is not None:
            row['gbps'] = extra['traffic_bytes'] / (row['latency_ms_median'] / 1e3) / 1e9
            row['bandwidth_pct'] = None if peak_gbps is None else 100 * row['gbps'] / peak_gbps
    return rows


def _cfg_in_chans(model: torch.nn.Module) -> int:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('input_size', (3,))[0]


def benchmark_models(
        models: Sequence[str],
        anchors: Optional[Sequence[str]] = None,
        resolutions: Sequence[int] = (224,),
        batch_size: int = 32,
        dtype: str = 'fp32',
        device: str = 'cpu',
        mode: str = 'inference',
        channels_last: bool = False,
        compile: Optional[str] = None,
        runs: int = 10,
        warmup: int = 2,
        model_kwargs: Optional[Dict[str, Any]] = None,
        timer: Timer = time.perf_counter,
) -> List[Dict[str, Any]]:
    """One row per model and anchor and resolution; each model is timed interleaved with its anchors.

    Inputs have the model's ``in_chans`` (its pretrained cfg's ``input_size``, 3 without one; an ``in_chans``
    in ``model_kwargs`` wins). ``anchors=None`` gives each zoo model timm's own model of the same name where
    timm has one; ``compile`` is a torch.compile backend name ('inductor') or None; ``model_kwargs`` go to
    every model's constructor (e.g. small ``depths`` for a quick run). GFLOPs are per image.
    """
    dev, torch_dtype = check_device_dtype(device, dtype)
    _check_mode(mode)
    models = expand_models(models)
    if anchors is not None:
        anchors = expand_models(anchors)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for spec in models:
        built = []
        for name in [spec, *(default_anchors(spec) if anchors is None else anchors)]:
            torch.manual_seed(0)
            model = create_model(name, **(model_kwargs or {}))
            model = model.to(device=dev, dtype=torch_dtype, memory_format=memory_format).train(mode == 'train')
            runner = torch.compile(model, backend=compile, dynamic=False) if compile else model
            built.append((name, model, runner))
        for res in resolutions:
            candidates = []
            for i, (name, model, runner) in enumerate(built):
                in_chans = (model_kwargs or {}).get('in_chans') or _cfg_in_chans(model)
                x = torch.randn(batch_size, in_chans, res, res, generator=torch.Generator().manual_seed(0))
                x = x.to(device=dev, dtype=torch_dtype, memory_format=memory_format)
                params = list(model.parameters())
                candidates.append(_Candidate(
                    name, 'model' if i == 0 else 'anchor', _model_step(runner, x, params, mode),
                    _model_step(model, x, params, mode), batch_size, sum(p.numel() for p in params)))
            extra = dict(kind='model', mode=mode, dtype=dtype, channels_last=channels_last, resolution=res,
                         batch_size=batch_size)
            rows.extend(_measure(spec, candidates, dev, runs, warmup, timer, compile, extra, 'img/s'))
    return rows


def benchmark_kernel(
        kernel: str,
        inputs: Mapping[str, Any],
        anchors: Sequence[str] = (),
        dtype: str = 'fp32',
        device: str = 'cpu',
        mode: str = 'inference',
        compile: Optional[str] = None,
        runs: int = 10,
        warmup: int = 2,
        timer: Timer = time.perf_counter,
) -> List[Dict[str, Any]]:
    """One row for the kernel and one per anchor, timed interleaved on the same inputs.

    ``inputs`` maps argument names, in call order, to tensor specs ``{'shape': [...], 'dtype': 'bf16'}``
    (passed positionally; dtype defaults to ``dtype``) or to values passed as keyword arguments.
    ``train`` mode runs forward and backward to every floating-point input. GFLOPs are per call.
    """
    dev, torch_dtype = check_device_dtype(device, dtype)
    _check_mode(mode)
    if not any(_is_tensor_spec(v) for v in inputs.values()):
        raise BenchmarkError('a kernel needs at least one tensor input, e.g. --shape q=2,4,56,32')
    tensors, kwargs = _make_inputs(inputs, dev, torch_dtype, requires_grad=mode == 'train')
    candidates = []
    fns = [resolve_callable(path) for path in [kernel, *anchors]]
    for i, (path, fn) in enumerate(zip([kernel, *anchors], fns)):
        runner = torch.compile(fn, backend=compile, dynamic=False) if compile else fn
        candidates.append(_Candidate(
            path, 'kernel' if i == 0 else 'anchor', _kernel_step(runner, tensors, kwargs, mode),
            _kernel_step(fn, tensors, kwargs, mode), 1, None))
    shapes = ' '.join(f'{n}={"x".join(map(str, v["shape"]))}' for n, v in inputs.items() if _is_tensor_spec(v))
    extra = dict(kind='kernel', mode=mode, dtype=dtype, channels_last=False, resolution=None, batch_size=None,
                 inputs=shapes, traffic_bytes=min_traffic_bytes(fns[0], tensors, kwargs, mode))
    return _measure(kernel, candidates, dev, runs, warmup, timer, compile, extra, 'calls/s')


def describe(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The run's settings and the meaning of its columns, one line each (Markdown header)."""
    first = rows[0]
    device = first['device']
    if device.startswith('cuda'):
        hw = torch.cuda.get_device_name(torch.device(device))
    else:
        hw = f'{torch.get_num_threads()} threads'
    return [
        f'device {device} ({hw}), torch {torch.__version__}, timm {timm.__version__}, dtype {first["dtype"]}, '
        f'mode {first["mode"]}, compile {first["compile"] or "off"}, channels_last {first["channels_last"]}',
        f'{first["runs"]} timed runs after {first["warmup"]} warmup runs, interleaved within each group; '
        'latency is per call (one batch): median [IQR], and min-max; vs first: throughput relative to the first '
        'row of its group (the model or kernel its anchors stand beside)',
        f'{MEM_COLUMN}: peak bytes allocated during one call above those live before it (weights and inputs '
        f'excluded), from {first["mem_method"]}',
        'GFLOPs: matmul/conv/attention FLOPs from torch.utils.flop_counter.FlopCounterMode (2 per multiply-add), '
        'per image for models, per call for kernels; n/a where it counted none',
    ] + ([
        'GB/s: the compulsory traffic of one call (inputs read and outputs written once; in train mode also the '
        'output gradient read and input gradients written) over the median latency; % peak BW: against the '
        "card's theoretical DRAM bandwidth (CUDA only)"] if first['kind'] == 'kernel' else [])


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    import csv
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return 'n/a' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.{digits}f}'


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    unit = rows[0]['unit']
    per = 'img' if unit == 'img/s' else 'call'
    lines = [f'- {line}' for line in describe(rows)] + ['']
    kernel = rows[0]['kind'] == 'kernel'
    lines.append(f'| name | role | input | {unit} | vs first | ms median [IQR] | ms min-max | peak step alloc MiB '
                 f'| params M | GFLOPs/{per} |' + (' GB/s | % peak BW |' if kernel else ''))
    lines.append('|---|---|---|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if kernel else ''))
    for r in rows:
        shape = r['inputs'] if r['kind'] == 'kernel' else f'{r["batch_size"]}x{r["resolution"]}²'
        lines.append(
            f'| {r["name"]} | {r["role"]} | {shape} | {_fmt(r["throughput"], 1)} | {r["rel_throughput"]:.2f} '
            f'| {_fmt(r["latency_ms_median"])} [{_fmt(r["latency_ms_q1"])}, {_fmt(r["latency_ms_q3"])}] '
            f'| {_fmt(r["latency_ms_min"])}-{_fmt(r["latency_ms_max"])} | {_fmt(r[MEM_COLUMN], 1)} '
            f'| {_fmt(r["params_m"])} | {_fmt(r["gflops"], 3)} |'
            + (f' {_fmt(r.get("gbps"), 2)} | {_fmt(r.get("bandwidth_pct"), 1)} |' if kernel else ''))
    return '\n'.join(lines) + '\n'


def write_markdown(rows: Sequence[Dict[str, Any]], path: str) -> None:
    with open(path, 'w') as f:
        f.write(markdown_table(rows))


def write_plot(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """Throughput and peak memory against resolution, one line per model (model rows only)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r['kind'] == 'model']
    if not rows:
        raise BenchmarkError('the plot shows models against resolution; this run has no model rows')
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained')
    series = _series(rows)
    colors = plt.colormaps['tab20'].resampled(max(len(series), 2))
    for i, ((group, name), points) in enumerate(series.items()):
        anchor = group != name
        style = dict(marker='o', color=colors(i), linestyle='--' if anchor else '-',
                     label=f'{name} (anchor of {group})' if anchor else name)
        res = [r['resolution'] for r in points]
        ax_speed.plot(res, [r['throughput'] for r in points], **style)
        ax_mem.plot(res, [r[MEM_COLUMN] for r in points], **style)
    first = rows[0]
    ax_speed.set(xlabel='resolution (px)', ylabel='img/s (median)', yscale='log',
                 title=f'{first["mode"]}, batch {first["batch_size"]}, {first["dtype"]}, {first["device"]}')
    ax_mem.set(xlabel='resolution (px)', ylabel=f'{MEM_COLUMN} (MiB)', title='peak allocation per call')
    for ax in (ax_speed, ax_mem):
        ax.grid(alpha=0.3)
    fig.legend(*ax_speed.get_legend_handles_labels(), loc='outside right upper', fontsize='small')
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(rows: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str], List[Dict[str, Any]]]:
    series: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r['group'], r['name']), []).append(r)
    return {k: sorted(v, key=lambda r: r['resolution']) for k, v in series.items()}
