"""What a benchmark is asked to run: devices and dtypes, modes, kernel input specs and YAML kernel cases.

Everything here checks a request before anything is built or timed; a request the harness cannot run raises
:class:`BenchmarkError` with a message that names what is wrong and what is allowed.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ['DTYPES', 'MODES', 'BenchmarkError', 'check_device_dtype', 'check_mode', 'parse_shape',
           'load_input_spec', 'is_tensor_spec', 'KernelCase', 'load_case', 'AnchorSpec', 'FamilyConfig',
           'load_family_config']

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
MODES = ('inference', 'train')


class BenchmarkError(ValueError):
    """A request the harness cannot run; the message names what is wrong and what is allowed."""


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise BenchmarkError(f'unknown mode {mode!r}; allowed: {", ".join(MODES)}')


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


def is_tensor_spec(value: Any) -> bool:
    return isinstance(value, dict) and 'shape' in value


def _normalize_inputs(inputs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: dict(shape=v) if isinstance(v, list) else v for k, v in inputs.items()}


def _read_yaml(path: str, what: str) -> Any:
    import yaml
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise BenchmarkError(f'cannot read {what} {path!r}: {e}') from None


def load_input_spec(path: str) -> Dict[str, Any]:
    """A kernel's arguments from a YAML (or JSON) mapping, in call order: a list is a tensor's shape, a
    mapping with ``shape`` (and optional ``dtype``, ``requires_grad``) a tensor, anything else a keyword
    argument passed as is, e.g. ``{q: [2, 4, 56, 32], k: [2, 4, 56, 32], v: [2, 4, 56, 32], is_causal: true}``."""
    spec = _read_yaml(path, 'input spec')
    if not isinstance(spec, dict):
        raise BenchmarkError(f'input spec {path!r} must be a mapping of argument name to shape, tensor or value')
    return _normalize_inputs(spec)


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
    case = _read_yaml(path, 'case')
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
    return KernelCase(case['kernel'], list(anchors), _normalize_inputs(inputs), modes, device)


@dataclass
class AnchorSpec:
    """A model measured beside a family's model: its name (as :func:`zoo.benchmark.create_model` takes it),
    constructor keyword arguments, and the argument, if any, that receives each resolution (``img_size`` for
    timm models whose windows or position tables are built for one input size)."""
    name: str
    kwargs: Dict[str, Any]
    size_kwarg: Optional[str] = None


@dataclass
class FamilyConfig:
    """A family's benchmark settings; None where the registry's default holds."""
    model: Optional[str] = None
    anchors: Optional[List[AnchorSpec]] = None


def load_family_config(path: str) -> FamilyConfig:
    """A family's settings for the resolution sweep from YAML (``configs/benchmarks/models/<family>.yaml``):
    ``model`` (default: the family's smallest variant with pretrained weights), ``anchors`` (default: timm's own
    model of the same name where timm has one), each a name or a mapping with ``name`` and optional ``kwargs``
    and ``size_kwarg``, and ``description`` (free text: why these anchors). Other keys are refused."""
    config = _read_yaml(path, 'family config')
    allowed = {'model', 'anchors', 'description'}
    if not isinstance(config, dict):
        raise BenchmarkError(f'family config {path!r} must be a mapping with keys {sorted(allowed)}')
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise BenchmarkError(f'family config {path!r} has unknown keys {unknown}; allowed: {sorted(allowed)}')
    model = config.get('model')
    if model is not None and not isinstance(model, str):
        raise BenchmarkError(f'family config {path!r}: model must be a model name, got {model!r}')
    anchors = config.get('anchors')
    if anchors is None:
        return FamilyConfig(model, None)
    if not isinstance(anchors, list):
        raise BenchmarkError(f'family config {path!r}: anchors must be a list, got {anchors!r}')
    specs = []
    for anchor in anchors:
        if isinstance(anchor, str):
            anchor = dict(name=anchor)
        if (not isinstance(anchor, dict) or not isinstance(anchor.get('name'), str)
                or set(anchor) - {'name', 'kwargs', 'size_kwarg'}
                or not isinstance(anchor.get('kwargs', {}), dict)
                or not isinstance(anchor.get('size_kwarg', ''), str)):
            raise BenchmarkError(f'family config {path!r}: an anchor is a model name or a mapping with name and '
                                 f'optional kwargs (a mapping) and size_kwarg (an argument name), got {anchor!r}')
        specs.append(AnchorSpec(anchor['name'], dict(anchor.get('kwargs', {})), anchor.get('size_kwarg')))
    return FamilyConfig(model, specs)
