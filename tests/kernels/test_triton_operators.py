"""The Triton backend as ``torch.library.triton_op`` operators: a call the rule sends to triton runs
``zoo::<op>_triton`` (and its backward), and torch.compile traces into them, so the graph it hands its backend
holds each kernel launch instead of one opaque call.

The compile tests need no GPU: they trace fake CUDA tensors (tests/compiled_graphs.py), in the process without
TRITON_INTERPRET; the route tests run the kernels in the interpreter."""
import os
from typing import Dict

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from kernels import use_backend
from kernels.library import OPERATORS
from tests.compiled_graphs import DispatchLog, compiled_graphs, launches, trace_fake_cuda

from .test_ops import CASES, _assert_all_close, _inputs, _loss_and_grads, triton_device

_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'

# the kernels each op's forward and backward launch, by their Triton function names (region_topk's "triton"
# backend is a few PyTorch ops: traced, they are ordinary graph nodes that inductor fuses)
KERNELS = {
    'window_attention': (['_fwd_kernel'], ['_bwd_dq_kernel', '_bwd_dkdv_kernel']),
    'neighborhood_attention': (['_fwd_kernel'], ['_bwd_dq_kernel', '_bwd_dkdv_local_kernel',
                                                 '_bwd_dkdv_extra_kernel']),
    'region_topk': ([], None),
    'routed_attention': (['_routed_fwd'], ['_routed_bwd_dq', '_routed_bwd_dkdv']),
    'sparse_attention': (['_sparse_fwd'], ['_sparse_bwd_dq', '_sparse_bwd_dkdv']),
    'selective_scan': (['_ss_fwd'], ['_ss_bwd']),
}


def _fake_cuda(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, dtype=v.dtype, device='cuda') for k, v in inputs.items()}


@pytest.mark.parametrize('op', list(CASES))
def test_compile_sees_the_forward_kernels_on_cuda(op, caplog):
    trace_fake_cuda(caplog)
    case = CASES[op]
    with FakeTensorMode(), torch.device('cuda'):
        graphs = compiled_graphs(lambda inputs: case.call(**inputs), _fake_cuda(_inputs(case)))
    assert [launches(gm) for gm in graphs] == [KERNELS[op][0]]


@pytest.mark.parametrize('op', [op for op in CASES if KERNELS[op][1] is not None])
def test_compile_sees_the_backward_kernels_on_cuda(op, caplog):
    # the backward operator compiled on its own: tracing a whole training step would run autograd's engine,
    # which needs a CUDA device even for fake tensors
    trace_fake_cuda(caplog)
    case, operator = CASES[op], OPERATORS[op]
    with FakeTensorMode(), torch.device('cuda'):
        inputs = _fake_cuda(_inputs(case))
        with DispatchLog() as log:
            case.call(**inputs)
        (args,) = [args for func, args in log.calls if func == f'zoo.{op}_triton.default']
        kwargs = dict(zip(operator.arguments, args))
        outputs = list(operator.triton_forward_op(*args))
        grads = [torch.ones_like(o) for o in outputs[:operator.n_outputs]]
        tensors = [kwargs[n] for n in operator.tensors]
        scalars = [kwargs[n] for n in operator.arguments if n not in operator.tensors]

        def backward(grads, tensors, outputs):
            return operator.triton_backward_op(grads, tensors, outputs, [True] * len(operator.differentiable),
                                               *scalars)

        graphs = compiled_graphs(backward, grads, tensors, outputs)
    assert [launches(gm) for gm in graphs] == [KERNELS[op][1]]


@pytest.mark.triton
@pytest.mark.parametrize('op', list(CASES))
def test_triton_calls_run_the_triton_operators(op):
    case = CASES[op]
    inputs = {k: v.to(triton_device()) for k, v in _inputs(case).items()}
    with use_backend('triton'), DispatchLog() as log:
        got = _loss_and_grads(case.call, inputs)
    called = {name for name, _ in log.calls if name.startswith('zoo.')}
    expected = {f'zoo.{op}_triton.default'}
    if KERNELS[op][1] is not None:
        expected.add(f'zoo.{op}_triton_backward.default')
    assert called == expected
    with use_backend('cpu'):
        want = _loss_and_grads(case.call, inputs)
    _assert_all_close(got, want, 2e-5 if _INTERPRETED else 4e-3)


@pytest.mark.triton
@pytest.mark.parametrize('op', [op for op in CASES if op != 'region_topk'])
def test_triton_calls_count_the_flops_of_the_math(op):
    # a kernel launch is no PyTorch product: the operator counts the cpu backend's products for the same call
    case = CASES[op]
    inputs = _inputs(case)
    counts = {}
    for backend in ('cpu', 'triton'):
        with use_backend(backend), FlopCounterMode(display=False) as counter:
            case.call(**inputs)
        counts[backend] = counter.get_total_flops()
    assert counts['triton'] == counts['cpu'] > 0


class _Call(torch.nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, inputs):
        return self.call(**inputs)


@pytest.mark.parametrize('op', list(CASES))
def test_onnx_decomposition_of_the_triton_operators(op, caplog):
    # torch.onnx.export(dynamo=True) applies torch's decomposition table: a model exported on CUDA ends in standard
    # ops (the reference math), as on the CPU
    trace_fake_cuda(caplog)
    case = CASES[op]
    with FakeTensorMode(), torch.device('cuda'):
        program = torch.export.export(_Call(case.call), (_fake_cuda(_inputs(case)),))
        assert f'zoo.{op}_triton.default' in launches(program.graph_module)
        decomposed = program.run_decompositions(torch._decomp.decomposition_table)
    assert not [n for n in decomposed.graph.nodes if 'zoo' in str(n.target) or 'triton' in str(n.target)]
