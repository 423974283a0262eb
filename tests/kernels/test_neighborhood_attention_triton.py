"""neighborhood_attention's Triton kernels against the reference (interpreter on CPU, or a CUDA device)."""
import os

import pytest
import torch

from kernels import use_backend
from kernels.neighborhood import neighborhood_attention

pytestmark = pytest.mark.triton

_ON_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope='module')
def _interpreter_or_cuda():
    # a failure, not a skip: `make test` runs this file with TRITON_INTERPRET=1; the "not triton" run
    # deselects it, so collection itself must not fail there
    if os.environ.get('TRITON_INTERPRET') != '1' and not _ON_CUDA:
        pytest.fail('the triton tests need TRITON_INTERPRET=1 (set before triton is imported, as `make test` '
                    'does) or a CUDA device', pytrace=False)


DEVICE = 'cuda' if _ON_CUDA else 'cpu'
# the interpreter runs fp32 dots in IEEE precision; GPUs in tf32 (10-bit mantissa)
FP32_REL = 1e-4 if os.environ.get('TRITON_INTERPRET') == '1' else 5e-3


def _inputs(b, heads, height, width, d, m, kernel_size, dtype, full=True, bias_batch=1, transnext=False, seed=0):
    """Random inputs; ``transnext=True`` gives the magnitudes of TransNeXt's cosine attention (unit q and k,
    softplus(temperature) ~ 4.2, small embeddings and learnable tokens)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0, unit=False):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * std
        if unit:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x.to(device=DEVICE, dtype=dtype).requires_grad_()

    local_len = kernel_size ** 2
    shape = (b, heads, height, width, d)
    tensors = dict(q=rand(*shape, unit=transnext), k=rand(*shape, unit=transnext), v=rand(*shape))
    kwargs = {}
    if full:
        small = 0.05 if transnext else 1.0
        kwargs = dict(rel_pos_bias=rand(heads, local_len, std=small), extra_k=rand(b, heads, m, d, unit=transnext),
                      extra_v=rand(b, heads, m, d), extra_bias=rand(bias_batch, heads, height * width, m),
                      scale=(rand(heads, std=0.1) + 4.17) if transnext else rand(heads),
                      query_embedding=rand(heads, 1, d, std=small), length_scale=True,
                      learnable_tokens=rand(heads, d, local_len, std=small), learnable_bias=rand(heads, 1, local_len))
    return tensors, kwargs


def _leaves(tensors, kwargs):
    return [*tensors.values(), *[x for x in kwargs.values() if isinstance(x, torch.Tensor)]]


def _run(backend, tensors, kwargs, kernel_size, dilation, weight):
    with use_backend(backend):
        out = neighborhood_attention(tensors['q'], tensors['k'], tensors['v'], kernel_size, dilation=dilation,
                                     **kwargs)
    grads = torch.autograd.grad((out.float() * weight).sum(), _leaves(tensors, kwargs))
    return out, grads


def _to_cpu64(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().requires_grad_()
    if isinstance(v, tuple):  # extra_bias_index: integer tensors
        return tuple(i.cpu() for i in v)
    return v


def _check(tensors, kwargs, kernel_size, dilation, rel):
    """Triton in the inputs' dtype against the reference in float64 on the same (rounded) inputs; errors are
    measured relative to each tensor's largest magnitude."""
    weight = torch.randn(tensors['q'].shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out, grads = _run('triton', tensors, kwargs, kernel_size, dilation, weight)
    t64 = {k: v.detach().cpu().double().requires_grad_() for k, v in tensors.items()}
    kw64 = {k: _to_cpu64(v) for k, v in kwargs.items()}
    out_ref, grads_ref = _run('reference', t64, kw64, kernel_size, dilation, weight.cpu().double())
    names = [*tensors, *[k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]]
    assert out.dtype == tensors['q'].dtype
    for name, a, b in [('out', out, out_ref), *zip(names, grads, grads_ref)]:
        assert a.shape == b.shape and a.dtype == tensors['q'].dtype, name
        err = (a.detach().cpu().double() - b).abs().max().item()
        assert err <= rel * b.abs().max().item(), f'{name}: max error {err:.3g} vs max |ref| {b.abs().max():.3g}'


def test_triton_transnext_float32_all_terms():
    """Every term at once, N and M spanning several blocks, extra_bias per batch, head dim 24 (padded to 32)."""
    tensors, kw = _inputs(b=2, heads=2, height=7, width=9, d=24, m=37, kernel_size=3, dtype=torch.float32,
                          bias_batch=2)
    _check(tensors, kw, 3, 1, rel=FP32_REL)


@pytest.mark.parametrize('kernel_size,dilation,height,width,d', [(5, 2, 6, 5, 16), (3, 1, 4, 11, 64)])
def test_triton_plain_float32(kernel_size, dilation, height, width, d):
    tensors, kw = _inputs(b=1, heads=2, height=height, width=width, d=d, m=0, kernel_size=kernel_size,
                          dtype=torch.float32, full=False)
    _check(tensors, kw, kernel_size, dilation, rel=FP32_REL)


def test_triton_transnext_float16_broadcast_bias():
    tensors, kw = _inputs(b=2, heads=3, height=6, width=5, d=24, m=9, kernel_size=3, dtype=torch.float16,
                          transnext=True)
    _check(tensors, kw, 3, 1, rel=2e-2)


def test_triton_partial_terms_float32():
    """Extra keys without bias, no learnable bias, dilation: the flags switch terms off independently."""
    tensors, kw = _inputs(b=1, heads=1, height=5, width=6, d=8, m=5, kernel_size=3, dtype=torch.float32)
    kw = {k: kw[k] for k in ('extra_k', 'extra_v', 'learnable_tokens', 'scale')}
    _check(tensors, kw, 3, 2, rel=FP32_REL)


def test_triton_factored_extra_bias_float32():
    """The (table, index) form of the extra bias: same outputs and gradients, the table's included."""
    tensors, kw = _inputs(b=2, heads=2, height=5, width=4, d=8, m=6, kernel_size=3, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    kw.pop('extra_bias')
    kw.pop('scale')  # its gradient is a sum of cancelling terms: loose in fp32, tested above
    kw['extra_bias_table'] = torch.randn(2, 4, 3, generator=g).to(DEVICE).requires_grad_()
    kw['extra_bias_index'] = (torch.randint(0, 4, (5, 3), generator=g).to(DEVICE),
                              torch.randint(0, 3, (4, 2), generator=g).to(DEVICE))
    _check(tensors, kw, 3, 1, rel=FP32_REL)
