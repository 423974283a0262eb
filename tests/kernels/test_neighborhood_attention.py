"""neighborhood_attention: reference against a per-query loop, cpu against reference, gradcheck, errors."""
import math

import pytest
import torch

from kernels import use_backend
from kernels.neighborhood import cpu as cpu_backend
from kernels.neighborhood import neighborhood_attention


def _inputs(b=2, heads=2, height=5, width=4, d=3, m=4, kernel_size=3, dtype=torch.float64, full=True, bias_batch=1,
            seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    local_len = kernel_size ** 2
    tensors = dict(q=rand(b, heads, height, width, d), k=rand(b, heads, height, width, d),
                   v=rand(b, heads, height, width, d))
    kwargs = {}
    if full:
        kwargs = dict(rel_pos_bias=rand(heads, local_len), extra_k=rand(b, heads, m, d), extra_v=rand(b, heads, m, d),
                      extra_bias=rand(bias_batch, heads, height * width, m), scale=rand(heads),
                      query_embedding=rand(heads, 1, d), length_scale=True,
                      learnable_tokens=rand(heads, d, local_len), learnable_bias=rand(heads, 1, local_len))
    return tensors, kwargs


def _leaves(tensors, kwargs):
    return [*tensors.values(), *[x for x in kwargs.values() if isinstance(x, torch.Tensor)]]


def _run(backend, tensors, kwargs, kernel_size, dilation=1):
    with use_backend(backend):
        out = neighborhood_attention(tensors['q'], tensors['k'], tensors['v'], kernel_size, dilation=dilation,
                                     **kwargs)
    grads = torch.autograd.grad((out * out.cos()).sum(), _leaves(tensors, kwargs))
    return out, grads


def _loop_attention(q, k, v, kernel_size, dilation, rpb, ek, ev, eb, temp, qe, lt, lb):
    """Straight from the docstring's semantics, one query at a time (the reference's own check)."""
    b, heads, height, width, d = q.shape
    m = ek.shape[2]
    radius = kernel_size // 2
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(heads):
            for y in range(height):
                for x in range(width):
                    nbrs = []
                    for a in range(kernel_size):
                        for c in range(kernel_size):
                            ky, kx = y + (a - radius) * dilation, x + (c - radius) * dilation
                            if 0 <= ky < height and 0 <= kx < width:
                                nbrs.append((a * kernel_size + c, ky, kx))
                    qv = q[bi, hi, y, x]
                    qs = (qv + qe[hi, 0]) * temp[hi] * math.log(len(nbrs) + m)
                    scores = [qs @ k[bi, hi, ky, kx] + rpb[hi, j] for j, ky, kx in nbrs]
                    scores += [qs @ ek[bi, hi, e] + eb[0, hi, y * width + x, e] for e in range(m)]
                    p = torch.stack(scores).softmax(0)
                    acc = torch.zeros_like(qv)
                    for i, (j, ky, kx) in enumerate(nbrs):
                        acc = acc + (p[i] + qv @ lt[hi, :, j] + lb[hi, 0, j]) * v[bi, hi, ky, kx]
                    for e in range(m):
                        acc = acc + p[len(nbrs) + e] * ev[bi, hi, e]
                    out[bi, hi, y, x] = acc
    return out


@pytest.mark.parametrize('kernel_size,dilation', [(3, 1), (3, 2), (5, 1)])
def test_reference_matches_per_query_loop(kernel_size, dilation):
    tensors, kw = _inputs(b=1, height=4, width=5, kernel_size=kernel_size)
    with use_backend('reference'):
        out = neighborhood_attention(tensors['q'], tensors['k'], tensors['v'], kernel_size, dilation=dilation, **kw)
    expected = _loop_attention(*tensors.values(), kernel_size, dilation, kw['rel_pos_bias'], kw['extra_k'],
                               kw['extra_v'], kw['extra_bias'], kw['scale'], kw['query_embedding'],
                               kw['learnable_tokens'], kw['learnable_bias'])
    torch.testing.assert_close(out, expected)


def test_plain_neighborhood_attention_is_masked_softmax():
    """Without extras: a border query's softmax covers only in-image keys, with the default D**-0.5 scale."""
    tensors, _ = _inputs(b=1, heads=1, height=3, width=3, d=4, full=False)
    q, k, v = tensors.values()
    out = neighborhood_attention(q, k, v, 3)
    corner = [(0, 0), (0, 1), (1, 0), (1, 1)]
    s = torch.stack([q[0, 0, 0, 0] @ k[0, 0, y, x] for y, x in corner]) / 2.0
    expected = (s.softmax(0)[:, None] * torch.stack([v[0, 0, y, x] for y, x in corner])).sum(0)
    torch.testing.assert_close(out[0, 0, 0, 0], expected)
    # kernel_size covering the whole image: plain full attention
    full = torch.softmax(q.view(9, 4) @ k.view(9, 4).t() / 2.0, -1) @ v.view(9, 4)
    torch.testing.assert_close(neighborhood_attention(q, k, v, 5).view(9, 4), full)


@pytest.mark.parametrize('kernel_size,dilation,height,width,d,bias_batch', [
    (3, 1, 7, 6, 5, 1), (3, 2, 6, 9, 16, 2), (5, 1, 5, 8, 24, 1), (7, 1, 3, 4, 64, 2), (3, 3, 8, 7, 32, 1)])
def test_cpu_matches_reference(kernel_size, dilation, height, width, d, bias_batch):
    tensors, kw = _inputs(height=height, width=width, d=d, kernel_size=kernel_size, bias_batch=bias_batch)
    out_ref, g_ref = _run('reference', tensors, kw, kernel_size, dilation)
    out_cpu, g_cpu = _run('cpu', tensors, kw, kernel_size, dilation)
    torch.testing.assert_close(out_cpu, out_ref)
    for a, b in zip(g_cpu, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('full', [False, True])
def test_cpu_matches_reference_in_small_chunks_float32(monkeypatch, full):
    monkeypatch.setattr(cpu_backend, '_CHUNK_ELEMENTS', 64)  # one query row per chunk
    tensors, kw = _inputs(height=9, width=5, d=16, dtype=torch.float32, full=full)
    out_ref, g_ref = _run('reference', tensors, kw, 3)
    out_cpu, g_cpu = _run('cpu', tensors, kw, 3)
    torch.testing.assert_close(out_cpu, out_ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_cpu, g_ref):
        assert (a - b).abs().max() <= 2e-4 * b.abs().max()  # fp32; logits up to ~20 here


@pytest.mark.parametrize('extras', ['none', 'extra_only', 'tokens_only'])
def test_cpu_optional_arguments(extras):
    tensors, kw = _inputs(height=5, width=6, d=4)
    keep = {'none': [], 'extra_only': ['extra_k', 'extra_v', 'scale'],
            'tokens_only': ['learnable_tokens', 'rel_pos_bias', 'query_embedding']}[extras]
    kw = {k: v for k, v in kw.items() if k in keep}
    out_ref, g_ref = _run('reference', tensors, kw, 3)
    out_cpu, g_cpu = _run('cpu', tensors, kw, 3)
    torch.testing.assert_close(out_cpu, out_ref)
    for a, b in zip(g_cpu, g_ref):
        torch.testing.assert_close(a, b)


def test_gradcheck_cpu_float64():
    tensors, kw = _inputs(b=1, heads=2, height=4, width=3, d=3, m=2)
    leaves = _leaves(tensors, kw)
    names = [*tensors, *[k for k, v in kw.items() if isinstance(v, torch.Tensor)]]

    def fn(*args):
        named = dict(zip(names, args))
        q, k, v = named.pop('q'), named.pop('k'), named.pop('v')
        with use_backend('cpu'):
            return neighborhood_attention(q, k, v, 3, dilation=1, length_scale=True, **named)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_transnext_layout_arguments_are_equivalent():
    """(heads, k, k) bias, (heads, N, M) extra bias, (heads, 1, D) embedding: same as their flat forms."""
    tensors, kw = _inputs(b=1, height=4, width=4)
    heads = 2
    out = neighborhood_attention(*tensors.values(), 3, **kw)
    kw2 = dict(kw, rel_pos_bias=kw['rel_pos_bias'].view(heads, 3, 3), extra_bias=kw['extra_bias'][0],
               query_embedding=kw['query_embedding'].view(heads, -1), learnable_bias=kw['learnable_bias'][:, 0],
               scale=kw['scale'].view(1, heads, 1, 1))
    torch.testing.assert_close(neighborhood_attention(*tensors.values(), 3, **kw2), out)


def _base():
    t, kw = _inputs(b=2, heads=2, height=5, width=4, d=3, m=4)
    return t['q'], t['k'], t['v'], kw


@pytest.mark.parametrize('change,error,match', [
    (lambda q, k, v, kw: ((q[0], k, v), {}), ValueError,
     r'q must be 5-D \(B, heads, H, W, D\), got shape \(2, 5, 4, 3\)'),
    (lambda q, k, v, kw: ((q, k[:, :, :4], v), {}), ValueError,
     r'k must be the shape of q .* = \(2, 2, 5, 4, 3\), got shape \(2, 2, 4, 4, 3\)'),
    (lambda q, k, v, kw: ((q, k.float(), v), {}), TypeError,
     r'k must have the dtype of q \(torch.float64\), got torch.float32'),
    (lambda q, k, v, kw: ((q.int(), k, v), {}), TypeError,
     r'q must be float16, bfloat16, float32 or float64, got torch.int32'),
    (lambda q, k, v, kw: ((q, k, v), dict(kernel_size=4)), ValueError, r'kernel_size must be an odd int'),
    (lambda q, k, v, kw: ((q, k, v), dict(dilation=0)), ValueError, r'dilation must be >= 1, got 0'),
    (lambda q, k, v, kw: ((q, k, v), dict(rel_pos_bias=kw['rel_pos_bias'][:, :8])), ValueError,
     r'rel_pos_bias must be .* = \(2, 9\) or \(2, 3, 3\), got shape \(2, 8\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(extra_k=kw['extra_k'])), ValueError, r'extra_k and extra_v'),
    (lambda q, k, v, kw: ((q, k, v), dict(extra_k=kw['extra_k'][..., :2], extra_v=kw['extra_v'])), ValueError,
     r'extra_k must be \(B, heads, M, D\) = \(2, 2, M, 3\).*got shape \(2, 2, 4, 2\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(extra_k=kw['extra_k'], extra_v=kw['extra_v'][:, :, :3])), ValueError,
     r'extra_v must be the shape of extra_k .* = \(2, 2, 4, 3\), got shape \(2, 2, 3, 3\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(extra_bias=kw['extra_bias'])), ValueError, r'extra_bias needs extra_k'),
    (lambda q, k, v, kw: ((q, k, v), dict(extra_k=kw['extra_k'], extra_v=kw['extra_v'],
                                          extra_bias=kw['extra_bias'][:, :, :5])), ValueError,
     r'extra_bias must be .* = \(2, 20, 4\) or \(1, 2, 20, 4\) or \(2, 2, 20, 4\), got shape \(1, 2, 5, 4\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(scale=kw['scale'][:1].repeat(3))), ValueError,
     r'scale must be \(2,\) = \(heads,\) or broadcastable to \(B, heads, H, W\) = \(2, 2, 5, 4\), got shape \(3\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(scale='x')), TypeError, r'scale must be None, a float or a tensor'),
    (lambda q, k, v, kw: ((q, k, v), dict(query_embedding=kw['query_embedding'][:, :, :2])), ValueError,
     r'query_embedding must be .*, got shape \(2, 1, 2\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(learnable_tokens=kw['learnable_tokens'][:1])), ValueError,
     r'learnable_tokens must be .* = \(2, 3, 9\), got shape \(1, 3, 9\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(learnable_bias=kw['learnable_bias'].float())), TypeError,
     r'learnable_bias must have the dtype of q \(torch.float64\)'),
    (lambda q, k, v, kw: ((q, k, v), dict(length_scale=1)), TypeError, r'length_scale must be a bool'),
])
def test_errors_name_tensor_shape_and_expectation(change, error, match):
    q, k, v, kw = _base()
    args, extra = change(q, k, v, kw)
    kernel_size = extra.pop('kernel_size', 3)
    with pytest.raises(error, match=match):
        neighborhood_attention(*args, kernel_size, **extra)


def test_op_reproduces_transnext_native_data_flow():
    """zoo.benchmark.cases.neighborhood rewrites TransNeXt's attention_native.py data flow (nn.Unfold of the
    concatenated normalised keys and values, -inf padding mask, joint softmax, learnable tokens); the op
    with the model-side prologue (normalise, softplus) must give the same outputs and gradients."""
    from zoo.benchmark.cases import neighborhood as cases
    g = torch.Generator().manual_seed(0)
    b, heads, height, width, d, m, local_len = 2, 3, 9, 7, 24, 12, 9
    shapes = [(b, heads, height, width, d)] * 3 + [(b, heads, m, d)] * 2 + [
        (heads, height * width, m), (heads, 1, d), (heads, 1, 1), (heads, local_len), (heads, d, local_len),
        (heads, 1, local_len)]
    args = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    results = []
    for fn in (cases.transnext_native, cases.transnext_unfold, cases.transnext_cpu):
        out = fn(*args)
        results.append((out, torch.autograd.grad((out * out.sin()).sum(), args)))
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0])
        for a, b_ in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b_)


def _factored(heads=2, height=5, width=4, ph=2, pw=2, th=6, tw=5, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(heads, th, tw, generator=g, dtype=dtype).requires_grad_()
    index_h = torch.randint(0, th, (height, ph), generator=g)
    index_w = torch.randint(0, tw, (width, pw), generator=g).int()
    return table, (index_h, index_w)


def test_factored_extra_bias_equals_dense_and_cpu_matches_reference():
    tensors, kw = _inputs(height=5, width=4, m=6)
    table, index = _factored(ph=3, pw=2)
    dense = table[:, index[0][:, None, :, None], index[1][None, :, None, :].long()].reshape(2, 20, 6)
    kw_dense = dict(kw, extra_bias=dense)
    kw_table = {k: v for k, v in kw.items() if k != 'extra_bias'}
    kw_table.update(extra_bias_table=table, extra_bias_index=index)
    out_dense, _ = _run('reference', tensors, kw_dense, 3)
    out_ref, g_ref = _run('reference', tensors, kw_table, 3)
    torch.testing.assert_close(out_ref, out_dense)
    out_cpu, g_cpu = _run('cpu', tensors, kw_table, 3)
    torch.testing.assert_close(out_cpu, out_ref)
    for a, b in zip(g_cpu, g_ref):  # includes the table's gradient
        torch.testing.assert_close(a, b)


def test_factored_extra_bias_chunked_and_gradcheck(monkeypatch):
    monkeypatch.setattr(cpu_backend, '_CHUNK_ELEMENTS', 64)
    tensors, kw = _inputs(b=1, heads=2, height=4, width=3, d=3, m=4)
    table, index = _factored(height=4, width=3, th=3, tw=4)
    q, k, v = tensors.values()
    ek, ev = kw['extra_k'], kw['extra_v']

    def fn(q, k, v, ek, ev, table):
        with use_backend('cpu'):
            return neighborhood_attention(q, k, v, 3, extra_k=ek, extra_v=ev, extra_bias_table=table,
                                          extra_bias_index=index, length_scale=True)

    assert torch.autograd.gradcheck(fn, (q, k, v, ek, ev, table), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('change,error,match', [
    (dict(extra_bias_index=None), ValueError, r'extra_bias_table and extra_bias_index must be given together'),
    (dict(extra_bias=True), ValueError, r'either extra_bias or extra_bias_table'),
    (dict(table_shape=(3, 6, 5)), ValueError,
     r'extra_bias_table must be \(heads, Th, Tw\) = \(2, Th, Tw\).*got shape \(3, 6, 5\)'),
    (dict(index_h=torch.zeros(5, 2)), TypeError, r'index_h must be int32 or int64, got torch.float32'),
    (dict(index_h=torch.zeros(4, 2, dtype=torch.long)), ValueError, r'index_h must be \(5, P\) .*got shape \(4, 2\)'),
    (dict(index_w=torch.full((4, 2), 5)), ValueError, r'index_w values must be in \[0, 4\], got values in \[5, 5\]'),
    (dict(index_w=torch.zeros(4, 3, dtype=torch.long)), ValueError, r'pooled sizes 2 x 3 .* M = 4'),
])
def test_factored_extra_bias_errors(change, error, match):
    q, k, v, kw = _base()
    table, (index_h, index_w) = _factored()
    if 'table_shape' in change:
        table = torch.zeros(change['table_shape'], dtype=torch.float64)
    index = (change.get('index_h', index_h), change.get('index_w', index_w))
    args = dict(extra_k=kw['extra_k'], extra_v=kw['extra_v'], extra_bias_table=table,
                extra_bias_index=change.get('extra_bias_index', index))
    if change.get('extra_bias'):
        args['extra_bias'] = kw['extra_bias']
    with pytest.raises(error, match=match):
        neighborhood_attention(q, k, v, 3, **args)


@pytest.mark.parametrize('blocked', [True, False])
def test_factored_bias_with_a_blocked_index(monkeypatch, blocked):
    """index[y, p] = y * P + p on both axes over a (heads, H*Ph, W*Pw) table (TransNeXt's bias resized to a new map
    size) is read as strided slices, not gathered: same values and gradients as the dense bias it stands for (and as
    the gather path, forced with one index entry changed)."""
    monkeypatch.setattr(cpu_backend, '_CHUNK_ELEMENTS', 64)  # several chunks of rows
    tensors, kw = _inputs(b=2, heads=2, height=4, width=3, d=3, m=6)
    q, k, v = tensors.values()
    ph, pw = 2, 3
    index_h = torch.arange(4 * ph).view(4, ph)
    index_w = torch.arange(3 * pw).view(3, pw)
    if not blocked:
        index_w = index_w.clone()
        index_w[2, 2] = 0
    assert cpu_backend._is_blocked(torch.zeros(2, 4 * ph, 3 * pw), index_h, index_w) == blocked
    table = torch.randn(2, 4 * ph, 3 * pw, dtype=torch.float64, requires_grad=True)
    dense = table[:, index_h[:, None, :, None], index_w[None, :, None, :]].reshape(2, 12, ph * pw)
    with use_backend('cpu'):
        ours = neighborhood_attention(q, k, v, 3, extra_k=kw['extra_k'], extra_v=kw['extra_v'],
                                      extra_bias_table=table, extra_bias_index=(index_h, index_w), length_scale=True)
        theirs = neighborhood_attention(q, k, v, 3, extra_k=kw['extra_k'], extra_v=kw['extra_v'],
                                        extra_bias=dense, length_scale=True)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, (q, table), grad)
    g_theirs = torch.autograd.grad(theirs, (q, table), grad)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b)


def test_factored_extra_bias_on_the_meta_device():
    """Shape-only runs (meta-device models, FLOP counts for the model cards) pass the checks that need no values."""
    q, k, v, kw = _base()
    table, index = _factored()
    with torch.device('meta'):
        args = [torch.empty_like(t, device='meta') for t in (q, k, v, kw['extra_k'], kw['extra_v'], table)]
        index = tuple(torch.empty_like(i, device='meta') for i in index)
    out = neighborhood_attention(*args[:3], 3, extra_k=args[3], extra_v=args[4], extra_bias_table=args[5],
                                 extra_bias_index=index)
    assert out.device.type == 'meta' and out.shape == q.shape


def test_transnext_cpb_table_is_separable_and_factored_op_matches_native():
    """TransNeXt's CPB index (torch.unique over (dy, dx) pairs of all query/pooled-key pairs) equals
    index_h * Tw + index_w, so its table reshapes to (heads, Th, Tw); the op's factored bias then
    reproduces the native data flow with the dense gathered bias, outputs and gradients."""
    import torch.nn.functional as F

    from zoo.benchmark.cases import neighborhood as cases
    height, width, pool = 9, 7, 3
    axis_qh, axis_qw = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
    axis_kh = F.adaptive_avg_pool1d(axis_qh[None], pool)[0]
    axis_kw = F.adaptive_avg_pool1d(axis_qw[None], pool)[0]
    qh, qw = [a.reshape(-1) for a in torch.meshgrid(axis_qh, axis_qw, indexing='ij')]
    kh, kw = [a.reshape(-1) for a in torch.meshgrid(axis_kh, axis_kw, indexing='ij')]
    pairs = torch.stack([qh[:, None] - kh[None, :], qw[:, None] - kw[None, :]], -1).view(-1, 2)
    _, idx_map = torch.unique(pairs, return_inverse=True, dim=0)
    index_h, th = cases.cpb_axis_index(height, pool, torch.device('cpu'))
    index_w, tw = cases.cpb_axis_index(width, pool, torch.device('cpu'))
    separable = index_h[:, None, :, None] * tw + index_w[None, :, None, :]  # (H, W, Ph, Pw)
    assert torch.equal(idx_map.view(height, width, pool, pool), separable)

    g = torch.Generator().manual_seed(0)
    b, heads, d, m = 1, 2, 8, pool * pool
    shapes = [(b, heads, height, width, d)] * 3 + [(b, heads, m, d)] * 2 + [
        (heads, th, tw), (heads, 1, d), (heads, 1, 1), (heads, 9), (heads, d, 9), (heads, 1, 9)]
    args = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    results = []
    for fn in (cases.transnext_cpb_native, cases.transnext_cpb_cpu):
        out = fn(*args)
        results.append((out, torch.autograd.grad((out * out.sin()).sum(), args)))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b_ in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b_)
