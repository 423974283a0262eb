"""What every public op shares: the backend rule with its Triton limits, and empty batches on every backend."""
import os
from typing import Callable, Dict, NamedTuple

import pytest
import torch

import kernels
import kernels.backend
from kernels import use_backend
from kernels.library import OPERATORS


class Case(NamedTuple):
    op: str  # the public name (and its operator's, kernels.library.OPERATORS)
    inputs: Callable[..., Dict[str, torch.Tensor]]  # (batch, dtype, head dim) -> differentiable leaves
    call: Callable[..., torch.Tensor]


def _randn(g, *shape, dtype):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _window_inputs(b, dtype, d, g):
    return dict(q=_randn(g, b, 2, 5, 6, d, dtype=dtype), k=_randn(g, b, 2, 5, 6, d, dtype=dtype),
                v=_randn(g, b, 2, 5, 6, d, dtype=dtype), rel_pos_bias=_randn(g, 2, 5, 5, dtype=dtype))


def _neighborhood_inputs(b, dtype, d, g):
    return dict(q=_randn(g, b, 2, 5, 6, d, dtype=dtype), k=_randn(g, b, 2, 5, 6, d, dtype=dtype),
                v=_randn(g, b, 2, 5, 6, d, dtype=dtype), extra_k=_randn(g, b, 2, 4, d, dtype=dtype),
                extra_v=_randn(g, b, 2, 4, d, dtype=dtype), rel_pos_bias=_randn(g, 2, 9, dtype=dtype),
                learnable_tokens=_randn(g, 2, d, 9, dtype=dtype), extra_bias_table=_randn(g, 2, 6, 5, dtype=dtype))


def _neighborhood_call(q, k, v, extra_k, extra_v, rel_pos_bias, learnable_tokens, extra_bias_table):
    index = (torch.arange(10).view(5, 2) % 6, torch.arange(12).view(6, 2) % 5)
    return kernels.neighborhood_attention(q, k, v, 3, extra_k=extra_k, extra_v=extra_v, rel_pos_bias=rel_pos_bias,
                                          learnable_tokens=learnable_tokens, extra_bias_table=extra_bias_table,
                                          extra_bias_index=index, length_scale=True)


def _routed_inputs(b, dtype, d, g):
    return dict(q=_randn(g, b, 2, 4, 6, d, dtype=dtype), k=_randn(g, b, 2, 4, 6, d, dtype=dtype),
                v=_randn(g, b, 2, 4, 6, d, dtype=dtype))


def _routed_call(q, k, v):
    index = q.new_tensor([[0, 1], [1, 3], [2, 0], [3, 2]], dtype=torch.long).expand(q.shape[0], 4, 2)
    return kernels.routed_attention(q, k, v, index, 2)


def _sparse_inputs(b, dtype, d, g):
    return dict(q=_randn(g, b, 2, 5, d, dtype=dtype), k=_randn(g, b, 2, 7, d, dtype=dtype),
                v=_randn(g, b, 2, 7, d, dtype=dtype))


def _sparse_call(q, k, v):
    index = q.new_tensor([[0, 3, -1], [6, 6, 1], [2, 4, 5], [-1, -1, -1], [1, 0, 2]], dtype=torch.long)
    index = index.expand(q.shape[0], 2, 5, 3)
    return kernels.sparse_attention(q, k, v, index)


def _scan_inputs(b, dtype, n, g):
    d, L = 4, 7
    return dict(u=_randn(g, b, 2, d, L, dtype=dtype), delta=_randn(g, b, 2, d, L, dtype=dtype),
                A=-torch.rand(2, d, n, generator=g, dtype=torch.float64).to(dtype),
                B=_randn(g, b, 2, n, L, dtype=dtype), C=_randn(g, b, 2, n, L, dtype=dtype),
                D=_randn(g, 2, d, dtype=dtype), z=_randn(g, b, d, L, dtype=dtype),
                delta_bias=_randn(g, 2, d, dtype=dtype))


def _scan_call(u, delta, A, B, C, D, z, delta_bias):
    steps = torch.arange(u.shape[-1])
    orders = torch.stack([steps, steps.flip(0)])
    return kernels.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, orders=orders)


CASES = {
    'window_attention': Case('window_attention', _window_inputs,
                             lambda q, k, v, rel_pos_bias: kernels.window_attention(q, k, v, 3,
                                                                                   rel_pos_bias=rel_pos_bias)),
    'neighborhood_attention': Case('neighborhood_attention', _neighborhood_inputs,
                                   _neighborhood_call),
    'region_topk': Case('region_topk', _routed_inputs,
                        lambda q, k, v: kernels.region_topk(q, k, 2, 2)),
    'routed_attention': Case('routed_attention', _routed_inputs, _routed_call),
    'sparse_attention': Case('sparse_attention', _sparse_inputs, _sparse_call),
    'selective_scan': Case('selective_scan', _scan_inputs, _scan_call),
}
# inputs beyond a limit of the Triton kernels other than the dtype: head dim 80 (state size 33 for the scan)
OVER_LIMIT = {'window_attention': (80, r'takes head dims \(D and Dv\) up to 64'),
              'neighborhood_attention': (80, 'takes head dims up to 64'),
              'routed_attention': (80, r'takes head dims \(D and Dv\) up to 64'),
              'sparse_attention': (80, r'takes head dims \(D and Dv\) up to 64'),
              'selective_scan': (33, 'takes state sizes n up to 32, got A with n=33')}
WITHIN = {'selective_scan': 4}  # head dim (state size) within every limit; 8 elsewhere


def _inputs(case: Case, b=2, dtype=torch.float32, d=None, seed=0):
    d = WITHIN.get(case.op, 8) if d is None else d
    return case.inputs(b, dtype, d, torch.Generator().manual_seed(seed))


@pytest.fixture
def spies(monkeypatch):
    """Replace an op's cpu and triton backends by recorders that run its cpu backend; returns the calls made."""
    def install(case: Case):
        calls = []
        backends = OPERATORS[case.op].backends
        cpu = backends['cpu']

        class Spy:
            def __init__(self, name):
                self.name = name

            def forward(self, **kw):
                calls.append(self.name)
                return cpu.forward(**kw)

            def backward(self, *args, **kw):
                return cpu.backward(*args, **kw)

        for name in ('cpu', 'triton'):
            monkeypatch.setitem(backends, name, Spy(name))
        return calls
    return install


def _auto_picks_triton(monkeypatch):
    """The rule under `auto` as on a CUDA machine: it would pick triton for these (CPU) tensors."""
    monkeypatch.delenv(kernels.backend.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels.backend, 'resolve_backend', lambda *tensors, requested=None: 'triton')


@pytest.mark.parametrize('op', list(CASES))
def test_auto_runs_triton_within_its_limits(op, monkeypatch, spies):
    case = CASES[op]
    calls = spies(case)
    _auto_picks_triton(monkeypatch)
    case.call(**_inputs(case))
    assert calls == ['triton']


@pytest.mark.parametrize('op', [op for op in CASES if op != 'region_topk'])
@pytest.mark.parametrize('beyond', ['dtype', 'size'])
def test_auto_runs_the_cpu_path_beyond_the_triton_limits(op, beyond, monkeypatch, spies):
    case = CASES[op]
    calls = spies(case)
    _auto_picks_triton(monkeypatch)
    inputs = _inputs(case, dtype=torch.float64) if beyond == 'dtype' else _inputs(case, d=OVER_LIMIT[op][0])
    case.call(**inputs)
    assert calls == ['cpu']


@pytest.mark.parametrize('op', [op for op in CASES if op != 'region_topk'])
@pytest.mark.parametrize('beyond', ['dtype', 'size'])
def test_explicit_triton_beyond_its_limits_raises_naming_the_limit(op, beyond, monkeypatch, spies):
    case = CASES[op]
    calls = spies(case)
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # the rule accepts CPU tensors for triton; nothing is imported
    if beyond == 'dtype':
        inputs, match = _inputs(case, dtype=torch.float64), 'runs float16, bfloat16 and float32.*got .*float64'
    else:
        inputs, match = _inputs(case, d=OVER_LIMIT[op][0]), OVER_LIMIT[op][1]
    with use_backend('triton'), pytest.raises(ValueError, match=f'the triton backend of {op} {match}'):
        case.call(**inputs)
    assert calls == []


def test_region_topk_has_no_triton_limits(monkeypatch, spies):
    """Its triton backend is the cpu one (a few small dense ops on any device): float64 runs there too."""
    case = CASES['region_topk']
    calls = spies(case)
    _auto_picks_triton(monkeypatch)
    case.call(**_inputs(case, dtype=torch.float64, d=80))
    assert calls == ['triton']


def _check_empty_batch(case: Case, backend: str, device: str = 'cpu', dtype=torch.float32):
    full = {k: t.to(device) for k, t in _inputs(case, b=2, dtype=dtype).items()}
    empty = {k: t.to(device).requires_grad_() for k, t in _inputs(case, b=0, dtype=dtype).items()}
    with use_backend(backend):
        out = case.call(**empty)
        want = case.call(**full)
    assert out.shape == (0,) + want.shape[1:] and out.dtype == want.dtype
    if not out.dtype.is_floating_point:
        return  # region_topk: indices
    grads = torch.autograd.grad(out.sum(), list(empty.values()), allow_unused=True)
    for (name, t), grad in zip(empty.items(), grads):
        assert grad is None or (grad.shape == t.shape and not grad.any()), name


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('op', list(CASES))
def test_empty_batch_gives_empty_results(op, backend):
    _check_empty_batch(CASES[op], backend)


_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


def triton_device() -> str:
    """Where the Triton tests run their kernels: 'cpu' under TRITON_INTERPRET=1, else 'cuda' (failing without one)."""
    if not _INTERPRETED and not torch.cuda.is_available():
        pytest.fail('Triton tests need TRITON_INTERPRET=1 (set before triton is imported) or a CUDA device',
                    pytrace=False)
    return 'cpu' if _INTERPRETED else 'cuda'


@pytest.mark.triton
@pytest.mark.parametrize('op', list(CASES))
def test_empty_batch_gives_empty_results_on_triton(op):
    _check_empty_batch(CASES[op], 'triton', triton_device())


# --- operators: torch.compile, torch.export, FX and ONNX see one call ---------------------------------------------

def _loss_and_grads(fn, inputs):
    leaves = {k: t.detach().requires_grad_() for k, t in inputs.items()}
    out = fn(**leaves)
    if not out.dtype.is_floating_point:
        return [out]
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return [out, *torch.autograd.grad((out * weights).sum(), list(leaves.values()))]


def _assert_all_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, i=i: f'output/gradient {i}: {m}')


@pytest.mark.slow
@pytest.mark.parametrize('op', list(CASES))
def test_compile_fullgraph_matches_eager(op, monkeypatch):
    # as on GitHub Actions: inductor refuses an implicit fallback for an operator with a decomposition when CI is set
    monkeypatch.setenv('CI', 'true')
    case = CASES[op]
    inputs = _inputs(case)
    torch._dynamo.reset()
    compiled = torch.compile(case.call, fullgraph=True)
    # no graph compiled by an earlier run: a cached graph is not lowered again, and could predate today's operators
    with torch.compiler.config.patch(force_disable_caches=True):
        _assert_all_close(_loss_and_grads(compiled, inputs), _loss_and_grads(case.call, inputs), 1e-5)


def _graph_targets(gm) -> set:
    return {str(getattr(n.target, '__name__', n.target)) for n in gm.graph.nodes if n.op == 'call_function'}


@pytest.mark.parametrize('op', list(CASES))
def test_fx_symbolic_trace_keeps_the_op_as_one_call(op):
    case = CASES[op]
    inputs = _inputs(case)
    gm = torch.fx.symbolic_trace(case.call)
    assert op in _graph_targets(gm)
    _assert_all_close(_loss_and_grads(gm, inputs), _loss_and_grads(case.call, inputs), 0)


class _Module(torch.nn.Module):
    """A module calling one op on its inputs (export and ONNX take modules)."""

    def __init__(self, call: Callable, names):
        super().__init__()
        self.call, self.names = call, list(names)

    def forward(self, *tensors):
        return self.call(**dict(zip(self.names, tensors)))


def _neighborhood_plain_call(q, k, v, extra_k, extra_v, rel_pos_bias, learnable_tokens, extra_bias_table):
    """Without the factored bias, whose index tables are tied to one map size."""
    return kernels.neighborhood_attention(q, k, v, 3, extra_k=extra_k, extra_v=extra_v, rel_pos_bias=rel_pos_bias,
                                          learnable_tokens=learnable_tokens, length_scale=True)


_B = torch.export.Dim('B', min=1, max=16)
_H, _W = torch.export.Dim('H', min=2, max=64), torch.export.Dim('W', min=2, max=64)
_H2, _W2 = torch.export.Dim('H2', min=1, max=32), torch.export.Dim('W2', min=1, max=32)
_L = torch.export.Dim('L', min=2, max=64)
_MAP = {0: _B, 2: _H, 3: _W}
_SEQ = {0: _B, 3: _L}
_REGIONS = {0: _B, 2: 2 * _H2, 3: 2 * _W2}
# op -> (call, {input: dynamic dims}, other sizes to run the exported program at: {input: shape})
EXPORTS = {
    'window_attention': (CASES['window_attention'].call, dict(q=_MAP, k=_MAP, v=_MAP),
                         [dict(q=(1, 2, 7, 4), k=(1, 2, 7, 4), v=(1, 2, 7, 4)),
                          dict(q=(3, 2, 9, 11), k=(3, 2, 9, 11), v=(3, 2, 9, 11))]),
    'neighborhood_attention': (_neighborhood_plain_call, dict(q=_MAP, k=_MAP, v=_MAP, extra_k={0: _B},
                                                              extra_v={0: _B}),
                               [dict(q=(1, 2, 3, 8), k=(1, 2, 3, 8), v=(1, 2, 3, 8), extra_k=(1, 2),
                                     extra_v=(1, 2)),
                                dict(q=(3, 2, 7, 2), k=(3, 2, 7, 2), v=(3, 2, 7, 2), extra_k=(3, 2), extra_v=(3, 2))]),
    'region_topk': (CASES['region_topk'].call, dict(q=_REGIONS, k=_REGIONS, v=_REGIONS),
                    [dict(q=(1, 2, 6, 2), k=(1, 2, 6, 2), v=(1, 2, 6, 2)),
                     dict(q=(3, 2, 8, 10), k=(3, 2, 8, 10), v=(3, 2, 8, 10))]),
    'routed_attention': (CASES['routed_attention'].call, dict(q=_REGIONS, k=_REGIONS, v=_REGIONS),
                         [dict(q=(1, 2, 6, 2), k=(1, 2, 6, 2), v=(1, 2, 6, 2)),
                          dict(q=(3, 2, 8, 10), k=(3, 2, 8, 10), v=(3, 2, 8, 10))]),
    'sparse_attention': (CASES['sparse_attention'].call, dict(q={0: _B}, k={0: _B}, v={0: _B}),
                         [dict(q=(1,), k=(1,), v=(1,)), dict(q=(4,), k=(4,), v=(4,))]),
    'selective_scan': (CASES['selective_scan'].call, dict(u=_SEQ, delta=_SEQ, B=_SEQ, C=_SEQ, z={0: _B, 2: _L}),
                       [dict(u=(1, 2, 4, 3), delta=(1, 2, 4, 3), B=(1, 2, 4, 3), C=(1, 2, 4, 3), z=(1, 4, 3)),
                        dict(u=(3, 2, 4, 12), delta=(3, 2, 4, 12), B=(3, 2, 4, 12), C=(3, 2, 4, 12), z=(3, 4, 12))]),
}


def _resized(inputs: Dict[str, torch.Tensor], sizes: Dict[str, tuple], seed: int) -> Dict[str, torch.Tensor]:
    """The inputs with their leading dims replaced by `sizes` (random values)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in inputs.items():
        shape = tuple(sizes.get(name, ())) + tuple(t.shape[len(sizes.get(name, ())):])
        out[name] = torch.randn(*shape, generator=g, dtype=torch.float64).to(t.dtype) if name in sizes else t
    return out


@pytest.mark.slow
@pytest.mark.parametrize('op', list(CASES))
def test_export_with_dynamic_shapes_matches_eager_at_other_sizes(op):
    case = CASES[op]
    call, dims, others = EXPORTS[op]
    inputs = _inputs(case)
    module = _Module(call, inputs)
    dynamic = tuple(dims.get(name) for name in inputs)
    program = torch.export.export(module, tuple(inputs.values()), dynamic_shapes=(dynamic,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert f'zoo.{op}.default' in targets, targets
    for i, sizes in enumerate(others):
        other = _resized(inputs, sizes, seed=i)
        torch.testing.assert_close(program.module()(*other.values()), call(**other), atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('op', list(CASES))
def test_onnx_export_with_dynamic_shapes_runs_in_onnxruntime(op, tmp_path):
    """One ONNX program (dynamic sizes as in EXPORTS) gives the eager results at the export size and the others."""
    import onnxruntime
    call, dims, others = EXPORTS[op]
    inputs = _inputs(CASES[op])
    module = _Module(call, inputs)
    dynamic = tuple(dims.get(name) for name in inputs)
    program = torch.onnx.export(module.eval(), tuple(inputs.values()), dynamo=True, dynamic_shapes=(dynamic,),
                                verbose=False)
    program.save(str(tmp_path / 'op.onnx'))
    session = onnxruntime.InferenceSession(str(tmp_path / 'op.onnx'), providers=['CPUExecutionProvider'])
    for case in [inputs] + [_resized(inputs, sizes, seed=i) for i, sizes in enumerate(others)]:
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), case.values())}
        got = torch.from_numpy(session.run(None, feeds)[0])
        torch.testing.assert_close(got, call(**case), atol=1e-4, rtol=1e-4)


def _operator_arguments(case: Case, inputs: Dict[str, torch.Tensor], backend: str) -> tuple:
    """The arguments the public function passes to its operator (recorded from one call)."""
    op = OPERATORS[case.op]
    recorded = []
    real = op.forward_op
    op.forward_op = lambda *args: recorded.append(args) or real(*args)
    try:
        case.call(**inputs)
    finally:
        op.forward_op = real
    return (*recorded[0][:-1], backend)


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('op', list(CASES))
def test_opcheck(op, backend):
    """torch.library.opcheck: schema, autograd registration, fake implementation against the real one (shapes,
    strides, dtypes) and AOT dispatch with dynamic shapes."""
    case = CASES[op]
    inputs = {k: t.double().requires_grad_() for k, t in _inputs(case).items()}
    args = _operator_arguments(case, inputs, backend)
    torch.library.opcheck(OPERATORS[op].forward_op, args)


@pytest.mark.triton
@pytest.mark.parametrize('op', list(CASES))
def test_opcheck_triton(op):
    case = CASES[op]
    device = triton_device()
    inputs = {k: t.to(device).requires_grad_() for k, t in _inputs(case).items()}
    args = _operator_arguments(case, inputs, 'triton')
    torch.library.opcheck(OPERATORS[op].forward_op, args)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('op', [op for op in CASES if op != 'region_topk'])  # region_topk gives indices
def test_flop_counter_around_a_training_step(op, backend):
    """FlopCounterMode around forward and backward on real tensors (tools/benchmark.py --mode train counts GFLOPs
    this way): every backward runs under the mode. Before, the scan's cpu backward failed there for scans with
    their own u and D (Vim): the einsum inside its torch.func.vjp could not read a functorch wrapper's storage."""
    from torch.utils.flop_counter import FlopCounterMode
    case = CASES[op]
    inputs = {k: t.requires_grad_() for k, t in _inputs(case).items()}
    with use_backend(backend), FlopCounterMode(display=False):
        case.call(**inputs).sum().backward()
    assert all(t.grad is not None for t in inputs.values())


@pytest.mark.parametrize('op', [op for op in CASES if op != 'selective_scan'])  # the scan has no products
def test_flop_counter_counts_the_products_on_meta_tensors(op):
    """FlopCounterMode sees the products the backend runs (model cards count MACs this way, on meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode
    case = CASES[op]
    inputs = {k: t.to('meta') for k, t in _inputs(case).items()}
    call = _neighborhood_plain_call if op == 'neighborhood_attention' else case.call  # no CPU index tables
    with use_backend('cpu'), FlopCounterMode(display=False) as counter:
        out = call(**inputs)
    assert out.device.type == 'meta' and counter.get_total_flops() > 0
