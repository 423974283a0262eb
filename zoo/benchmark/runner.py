"""Running a benchmark: resolving models, anchors and kernels, building their inputs, and measuring each group.

* models: a zoo or timm name (``zoo_van_b0``, ``timm:mambaout_femto``) or an import path to a callable
  that returns an ``nn.Module`` (``pkg.mod:factory``), in ``inference`` or ``train`` mode (forward +
  backward, no optimizer), on inputs of the model's ``in_chans`` at each requested resolution;
* kernels: an op by import path (``torch.nn.functional:scaled_dot_product_attention``) called on random
  tensors from an input spec, forward (``inference``) or forward + backward (``train``).

Everything measured in one call runs in one process; a model or kernel and its anchors form a group, timed
interleaved (:mod:`zoo.benchmark.measure`). Zoo models are looked up in timm's registry, which ``zoo.models``
fills: it is imported the first time a zoo name is asked for.
"""
import importlib
import logging
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
from torch.utils._pytree import tree_leaves

from .load import background_load
from .measure import (
    MEM_COLUMN,
    Timer,
    count_flops,
    interleaved_times,
    memory_method,
    min_traffic_bytes,
    peak_bandwidth_gbps,
    peak_memory,
    summarize,
)
from .specs import DTYPES, BenchmarkError, check_device_dtype, check_mode, is_tensor_spec

__all__ = ['TIMM_PREFIX', 'ZOO_PREFIX', 'zoo_models', 'resolve_callable', 'create_model', 'expand_models',
           'default_anchors', 'make_inputs', 'model_step', 'kernel_step', 'benchmark_models', 'benchmark_kernel',
           'compare_under_load']

TIMM_PREFIX = 'timm:'
ZOO_PREFIX = 'zoo_'

Row = Dict[str, Any]

_logger = logging.getLogger(__name__)


def zoo_models(pattern: str = '*') -> List[str]:
    """The zoo's registered names matching a shell pattern, with or without the ``zoo_`` prefix."""
    importlib.import_module('zoo.models')  # registers the zoo's models with timm
    names = timm.list_models(ZOO_PREFIX + '*')
    return [n for n in names if fnmatch(n, pattern) or fnmatch(n[len(ZOO_PREFIX):], pattern)]


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
        f'unknown model {spec!r}; expected a zoo model ({", ".join(zoo_models()[:3])}, ... or a pattern '
        f'like zoo_van_*), timm:<timm model name> or module.sub:callable')


def check_model(spec: str) -> None:
    """Raise a :class:`BenchmarkError` unless ``spec`` names a model :func:`create_model` can build."""
    if spec.startswith(TIMM_PREFIX):
        if not timm.is_model(spec[len(TIMM_PREFIX):]):
            raise _model_error(spec)
    elif ':' in spec:
        resolve_callable(spec)
    else:
        if spec.startswith(ZOO_PREFIX):
            zoo_models()
        if not timm.is_model(spec):
            raise _model_error(spec)


def create_model(spec: str, **kwargs) -> torch.nn.Module:
    """A model from a registered name (zoo or timm), ``timm:<name>`` or ``module.sub:callable``."""
    check_model(spec)
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
            matched = zoo_models(spec)
            if not matched:
                raise BenchmarkError(
                    f'pattern {spec!r} matches no zoo model; the zoo has {", ".join(zoo_models())}')
            names.extend(matched)
        else:
            check_model(spec)
            names.append(spec)
    return names


def default_anchors(spec: str) -> List[str]:
    """timm's own model for a zoo model that re-registers one (zoo_mambaout_femto -> timm:mambaout_femto)."""
    if spec.startswith(ZOO_PREFIX) and timm.is_model(spec[len(ZOO_PREFIX):]):
        return [TIMM_PREFIX + spec[len(ZOO_PREFIX):]]
    return []


def make_inputs(
        spec: Mapping[str, Any], device: torch.device, dtype: torch.dtype, requires_grad: bool,
) -> Tuple[List[torch.Tensor], Dict[str, Any]]:
    """Random tensors (seed 0) for the tensor specs, in order, and the other values as keyword arguments."""
    generator = torch.Generator().manual_seed(0)
    tensors, kwargs = [], {}
    for name, value in spec.items():
        if not is_tensor_spec(value):
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


def model_step(model: Callable, x: torch.Tensor, params: Sequence[torch.nn.Parameter], mode: str) -> Callable:
    """One call of ``model`` on ``x``: under inference_mode, or forward + backward (gradients freed inside)."""
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


def kernel_step(fn: Callable, tensors: List[torch.Tensor], kwargs: Dict[str, Any], mode: str) -> Callable:
    """One call of ``fn``: under inference_mode, or forward + backward to every input that requires grad."""
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


def _measure(
        group: str, candidates: List[_Candidate], device: torch.device, runs: int, warmup: int, timer: Timer,
        compile: Optional[str], extra: Dict[str, Any], unit: str,
) -> List[Row]:
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


@dataclass
class _Built:
    name: str
    model: torch.nn.Module
    runner: Callable
    in_chans: int


def build_model(name: str, kwargs: Dict[str, Any], device: torch.device, dtype: torch.dtype,
                memory_format: torch.memory_format, mode: str, compile: Optional[str]) -> _Built:
    """A model (seed 0) on the device, in the dtype, memory format and train/eval state of the mode."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    model = model.to(device=device, dtype=dtype, memory_format=memory_format).train(mode == 'train')
    runner = torch.compile(model, backend=compile, dynamic=False) if compile else model
    return _Built(name, model, runner, kwargs.get('in_chans') or _cfg_in_chans(model))


def measure_models(
        group: str, built: Sequence[_Built], resolutions: Sequence[int], batch_size: int, dtype: str,
        device: torch.device, torch_dtype: torch.dtype, mode: str, channels_last: bool, compile: Optional[str],
        runs: int, warmup: int, timer: Timer,
) -> List[Row]:
    """Rows of built models at each resolution; the first is the group's model, the others its anchors."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for res in resolutions:
        candidates = []
        for i, b in enumerate(built):
            x = torch.randn(batch_size, b.in_chans, res, res, generator=torch.Generator().manual_seed(0))
            x = x.to(device=device, dtype=torch_dtype, memory_format=memory_format)
            params = list(b.model.parameters())
            candidates.append(_Candidate(
                b.name, 'model' if i == 0 else 'anchor', model_step(b.runner, x, params, mode),
                model_step(b.model, x, params, mode), batch_size, sum(p.numel() for p in params)))
        extra = dict(kind='model', mode=mode, dtype=dtype, channels_last=channels_last, resolution=res,
                     batch_size=batch_size)
        rows.extend(_measure(group, candidates, device, runs, warmup, timer, compile, extra, 'img/s'))
    return rows


def _mark_load(rows: List[Row], threads: int) -> List[Row]:
    if threads:
        for row in rows:
            row['background_load'] = threads
    return rows


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
        background_load: int = 0,
) -> List[Row]:
    """One row per model and anchor and resolution; each model is timed interleaved with its anchors.

    Inputs have the model's ``in_chans`` (its pretrained cfg's ``input_size``, 3 without one; an ``in_chans``
    in ``model_kwargs`` wins). ``anchors=None`` gives each zoo model timm's own model of the same name where
    timm has one; ``compile`` is a torch.compile backend name ('inductor') or None; ``model_kwargs`` go to
    every model's constructor (e.g. small ``depths`` for a quick run). GFLOPs are per image.
    ``background_load`` > 0 measures while another process keeps that many threads busy
    (:mod:`zoo.benchmark.load`); its rows carry the number in ``background_load``.
    """
    dev, torch_dtype = check_device_dtype(device, dtype)
    check_mode(mode)
    models = expand_models(models)
    if anchors is not None:
        anchors = expand_models(anchors)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for spec in models:
        built = [build_model(name, dict(model_kwargs or {}), dev, torch_dtype, memory_format, mode, compile)
                 for name in [spec, *(default_anchors(spec) if anchors is None else anchors)]]
        with _load(background_load):
            rows.extend(measure_models(spec, built, resolutions, batch_size, dtype, dev, torch_dtype, mode,
                                        channels_last, compile, runs, warmup, timer))
    return _mark_load(rows, background_load)


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
        background_load: int = 0,
) -> List[Row]:
    """One row for the kernel and one per anchor, timed interleaved on the same inputs.

    ``inputs`` maps argument names, in call order, to tensor specs ``{'shape': [...], 'dtype': 'bf16'}``
    (passed positionally; dtype defaults to ``dtype``) or to values passed as keyword arguments.
    ``train`` mode runs forward and backward to every floating-point input. GFLOPs are per call.
    ``background_load`` as in :func:`benchmark_models`.
    """
    dev, torch_dtype = check_device_dtype(device, dtype)
    check_mode(mode)
    if not any(is_tensor_spec(v) for v in inputs.values()):
        raise BenchmarkError('a kernel needs at least one tensor input, e.g. --shape q=2,4,56,32')
    tensors, kwargs = make_inputs(inputs, dev, torch_dtype, requires_grad=mode == 'train')
    candidates = []
    fns = [resolve_callable(path) for path in [kernel, *anchors]]
    for i, (path, fn) in enumerate(zip([kernel, *anchors], fns)):
        runner = torch.compile(fn, backend=compile, dynamic=False) if compile else fn
        candidates.append(_Candidate(
            path, 'kernel' if i == 0 else 'anchor', kernel_step(runner, tensors, kwargs, mode),
            kernel_step(fn, tensors, kwargs, mode), 1, None))
    shapes = ' '.join(f'{n}={"x".join(map(str, v["shape"]))}' for n, v in inputs.items() if is_tensor_spec(v))
    extra = dict(kind='kernel', mode=mode, dtype=dtype, channels_last=False, resolution=None, batch_size=None,
                 inputs=shapes, traffic_bytes=min_traffic_bytes(fns[0], tensors, kwargs, mode))
    with _load(background_load):
        rows = _measure(kernel, candidates, dev, runs, warmup, timer, compile, extra, 'calls/s')
    return _mark_load(rows, background_load)


def _load(threads: int):
    if threads:
        _logger.info(f'starting a background load of {threads} threads')
    return background_load(threads)


def compare_under_load(run: Callable[..., List[Row]], threads: int) -> List[Row]:
    """``run(background_load=0)`` then ``run(background_load=threads)``: the same measurement idle and under
    load, every row marked with its ``background_load`` (see :func:`zoo.benchmark.report.load_ratios`)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BenchmarkError(f'a load comparison needs a background load of >= 1 threads, got {threads!r}')
    idle = run(background_load=0)
    for row in idle:
        row['background_load'] = 0
    return idle + run(background_load=threads)
