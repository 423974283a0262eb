"""What torch.compile hands its backend, for tests that look inside compiled graphs: the AOT graphs of a call, and
the Triton kernel launches and zoo operator calls in them. With fake CUDA tensors (FakeTensorMode) no GPU is needed:
the graphs are traced, not run."""
import logging
import os
from typing import List

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['DispatchLog', 'compiled_graphs', 'launches', 'trace_fake_cuda']


def compiled_graphs(fn, *args) -> List[torch.fx.GraphModule]:
    """The AOT graphs torch.compile(fullgraph=True) gives its backend for ``fn(*args)`` (the forward graph only
    where nothing requires a gradient)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    torch.compile(fn, backend=aot_autograd(fw_compiler=record), fullgraph=True)(*args)
    return graphs


def launches(gm: torch.fx.GraphModule) -> List[str]:
    """The graph's Triton kernel launches (kernel function names) and zoo operator calls, in order."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    found = []
    for node in gm.graph.nodes:
        if node.op != 'call_function':
            continue
        if 'triton_kernel_wrapper' in str(node.target):
            found.append(kernel_side_table.get_kernel(node.kwargs['kernel_idx']).fn.__name__)
        elif str(node.target).startswith('zoo.'):
            found.append(str(node.target))
    return found


def trace_fake_cuda(caplog) -> None:
    """Prepare a test that traces Triton kernels on fake CUDA tensors: it must run without TRITON_INTERPRET (the
    interpreter's kernels are plain Python functions, which the tracer cannot see into)."""
    if os.environ.get('TRITON_INTERPRET') == '1':
        pytest.fail('run without TRITON_INTERPRET: the interpreter hides the kernels from the tracer', pytrace=False)
    # without a CUDA driver, the tracer's analysis of which arguments a kernel writes cannot compile the kernel and
    # says so at length; it then treats every argument as written, which changes nothing the tests check
    caplog.set_level(logging.ERROR, logger='torch._higher_order_ops.triton_kernel_wrap')


class DispatchLog(TorchDispatchMode):
    """Records the operators called below autograd: (name, arguments)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))
