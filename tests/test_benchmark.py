"""zoo.benchmark: statistics, interleaving, FLOPs, params, peak memory, reports. Nothing here asserts on time."""
import csv
import itertools

import matplotlib.image
import pytest
import torch
import torch.nn as nn

from zoo import benchmark

TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_MAMBAOUT = dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))


def tiny_net() -> nn.Module:
    """conv 3->4 (3x3, pad 1), pool to 8x8 (no FLOPs counted; identity at 8x8), flatten, linear 256->10."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def not_a_model():
    return 'model'


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if is_causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float('-inf'))
    return torch.softmax(scores, dim=-1) @ v


def fake_clock():
    """A timer that advances one second per read: every timed call then lasts exactly one second."""
    return itertools.count().__next__


def test_summarize():
    stats = benchmark.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats == benchmark.Stats(median=3.0, q1=2.0, q3=4.0, min=1.0, max=5.0)
    assert benchmark.summarize([7.0]) == benchmark.Stats(7.0, 7.0, 7.0, 7.0, 7.0)
    assert benchmark.summarize([1.0, 3.0]).median == 2.0


def test_interleaved_times_order_and_durations():
    now = [0.0]
    log = []

    def make_step(name, cost):
        def step():
            log.append(name)
            now[0] += cost
        return step

    syncs = []
    times = benchmark.interleaved_times(
        [make_step('A', 2.0), make_step('B', 5.0)], runs=3, warmup=2, timer=lambda: now[0],
        sync=lambda: syncs.append(len(log)))
    assert log == ['A', 'A', 'B', 'B'] + ['A', 'B'] * 3
    assert times == [[2.0] * 3, [5.0] * 3]
    assert syncs[0] == 4 and len(syncs) == 1 + 6  # once after warmup, then after every timed call


def test_interleaved_times_drift_hits_both():
    # a clock that slows down over time: interleaving spreads the drift over both candidates alike
    calls = [0]

    def step():
        calls[0] += 1

    times = benchmark.interleaved_times([step, step], runs=4, warmup=0, timer=lambda: calls[0] ** 2)
    assert [benchmark.summarize(t).median for t in times] == [7.0, 9.0]  # sequential runs would give 4 vs 12


def test_interleaved_times_rejects_no_runs():
    with pytest.raises(benchmark.BenchmarkError, match='runs must be >= 1'):
        benchmark.interleaved_times([lambda: None], runs=0)


def test_flops_and_params_of_tiny_net():
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)  # 2 * output elements * MACs per output
    linear = 2 * 256 * 10
    rows = benchmark.benchmark_models(
        ['tests.test_benchmark:tiny_net'], resolutions=[8], batch_size=2, runs=2, warmup=0, timer=fake_clock())
    (row,) = rows
    assert row['params_m'] * 1e6 == pytest.approx(4 * 27 + 4 + 256 * 10 + 10)
    assert row['gflops'] * 1e9 == pytest.approx(conv + linear)
    # backward: the linear's input and weight gradients, the conv's weight gradient (its input needs none)
    (train,) = benchmark.benchmark_models(
        ['tests.test_benchmark:tiny_net'], resolutions=[8], batch_size=2, runs=2, warmup=0, mode='train',
        timer=fake_clock())
    assert train['gflops'] * 1e9 == pytest.approx(conv + linear + conv + 2 * linear)


def test_rows_from_fake_timer():
    rows = benchmark.benchmark_models(
        ['tests.test_benchmark:tiny_net'], resolutions=[8], batch_size=4, runs=3, warmup=0, timer=fake_clock())
    (row,) = rows
    assert row['latency_ms_median'] == row['latency_ms_min'] == row['latency_ms_max'] == 1000.0
    assert row['throughput'] == 4.0 and row['unit'] == 'img/s' and row['rel_throughput'] == 1.0
    assert (row['name'], row['role'], row['resolution'], row['batch_size']) == ('tests.test_benchmark:tiny_net',
                                                                              'model', 8, 4)


def test_peak_memory_cpu_counts_allocations_during_the_call():
    resident = torch.ones(1 << 20)  # 4 MiB live before the call: not counted

    def step():
        a = torch.empty_like(resident)  # 4 MiB
        b = resident[: 1 << 19] + 1  # 2 MiB, while a is live
        del a, b
        return torch.empty(1 << 18)  # 1 MiB after both were freed

    peak = benchmark.peak_memory(step, torch.device('cpu'))
    assert 6 * 2 ** 20 <= peak < 6 * 2 ** 20 + 4096


def test_peak_memory_train_step_includes_gradients():
    model = nn.Linear(512, 512, bias=False)
    x = torch.randn(1, 512)
    step = benchmark._model_step(model, x, list(model.parameters()), 'train')
    assert benchmark.peak_memory(step, torch.device('cpu')) >= 512 * 512 * 4
    assert model.weight.grad is None


def test_zoo_model_beside_timm_anchor():
    rows = benchmark.benchmark_models(
        ['zoo_mambaout_femto'], resolutions=[32, 48], batch_size=2, runs=2, warmup=1, model_kwargs=TINY_MAMBAOUT)
    assert [(r['name'], r['role'], r['resolution']) for r in rows] == [
        ('zoo_mambaout_femto', 'model', 32), ('timm:mambaout_femto', 'anchor', 32),
        ('zoo_mambaout_femto', 'model', 48), ('timm:mambaout_femto', 'anchor', 48)]
    assert {r['group'] for r in rows} == {'zoo_mambaout_femto'}
    # the same architecture: same parameters and FLOPs
    assert rows[0]['params_m'] == rows[1]['params_m'] and rows[0]['gflops'] == pytest.approx(rows[1]['gflops'])
    assert rows[2]['gflops'] > rows[0]['gflops']
    assert all(r['throughput'] > 0 and r[benchmark.MEM_COLUMN] > 0 for r in rows)


def test_explicit_anchors_and_train_mode():
    rows = benchmark.benchmark_models(
        ['zoo_van_b0'], anchors=['tests.test_benchmark:tiny_net'], resolutions=[8], batch_size=2, runs=2,
        warmup=0, mode='train', channels_last=True)
    assert [(r['name'], r['role']) for r in rows] == [('zoo_van_b0', 'model'),
                                                      ('tests.test_benchmark:tiny_net', 'anchor')]
    assert all(r['mode'] == 'train' and r['channels_last'] for r in rows)


def test_compile_warmup_is_forced():
    (row,) = benchmark.benchmark_models(
        ['tests.test_benchmark:tiny_net'], resolutions=[8], batch_size=1, runs=2, warmup=0, compile='eager',
        timer=fake_clock())
    assert row['compile'] == 'eager' and row['warmup'] == 1


def test_kernel_sdpa_vs_reference():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    for causal in (False, True):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(naive_attention(q, k, v, is_causal=causal), expected)
    shape = dict(shape=[2, 2, 16, 8])
    for mode in benchmark.MODES:
        rows = benchmark.benchmark_kernel(
            'torch.nn.functional:scaled_dot_product_attention', dict(q=shape, k=shape, v=shape),
            anchors=['tests.test_benchmark:naive_attention'], mode=mode, runs=2, warmup=1)
        assert [(r['name'], r['role']) for r in rows] == [
            ('torch.nn.functional:scaled_dot_product_attention', 'kernel'),
            ('tests.test_benchmark:naive_attention', 'anchor')]
        assert all(r['unit'] == 'calls/s' and r['inputs'] == 'q=2x2x16x8 k=2x2x16x8 v=2x2x16x8' for r in rows)
    matmuls = 2 * 2 * (2 * 2 * 16 * 16 * 8)  # QK^T and AV, B*H*L*L*D multiply-adds each
    assert rows[1]['gflops'] * 1e9 == pytest.approx(3 * matmuls)  # train: forward + two gradients per matmul
    fwd = benchmark.benchmark_kernel(
        'torch.nn.functional:scaled_dot_product_attention', dict(q=shape, k=shape, v=shape, is_causal=True),
        anchors=['tests.test_benchmark:naive_attention'], runs=1, warmup=0)
    assert fwd[0]['gflops'] * 1e9 == pytest.approx(matmuls) == fwd[1]['gflops'] * 1e9


@pytest.mark.parametrize('call, message', [
    (lambda: benchmark.create_model('zoo_nope'), "unknown model 'zoo_nope'; expected a zoo model"),
    (lambda: benchmark.create_model('timm:nope'), "unknown model 'timm:nope'"),
    (lambda: benchmark.create_model('tests.test_benchmark:not_a_model'), 'returned str, expected a torch.nn.Module'),
    (lambda: benchmark.resolve_callable('tests.test_benchmark:missing'), "has no attribute 'missing'"),
    (lambda: benchmark.resolve_callable('no_such_module_xyz:f'), "cannot import module 'no_such_module_xyz'"),
    (lambda: benchmark.resolve_callable('torch.nn.functional'), 'expected module.sub:callable'),
    (lambda: benchmark.expand_models(['zoo_nothing_*']), "pattern 'zoo_nothing_\\*' matches no zoo model"),
    (lambda: benchmark.check_device_dtype('cpu', 'fp16'), 'allowed on cpu: fp32, bf16'),
    (lambda: benchmark.check_device_dtype('cpu', 'fp64'), "unknown dtype 'fp64'; allowed: fp32, bf16, fp16"),
    (lambda: benchmark.check_device_dtype('tpu', 'fp32'), "bad device 'tpu'"),
    (lambda: benchmark.parse_shape('q=2,x,3'), "bad shape 'q=2,x,3': expected NAME=D0,D1"),
    (lambda: benchmark.parse_shape('2,3'), "bad shape '2,3'"),
    (lambda: benchmark.parse_shape('q=2,3:fp8'), "unknown dtype 'fp8'"),
    (lambda: benchmark.benchmark_models(['zoo_van_b0'], mode='eval'), "unknown mode 'eval'; allowed: inference, train"),
    (lambda: benchmark.benchmark_kernel('torch:add', dict(alpha=1)), 'needs at least one tensor input'),
])
def test_errors_name_what_is_wrong(call, message):
    with pytest.raises(benchmark.BenchmarkError, match=message):
        call()


def test_cuda_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(benchmark.BenchmarkError, match="device 'cuda' is not available.*allowed: cpu"):
        benchmark.check_device_dtype('cuda', 'fp32')


def test_names():
    assert benchmark.default_anchors('zoo_mambaout_femto') == ['timm:mambaout_femto']
    assert benchmark.default_anchors('zoo_van_b0') == []
    assert benchmark.default_anchors('timm:resnet18') == []
    assert benchmark.expand_models(['zoo_van_b[01]', 'timm:resnet18']) == ['zoo_van_b0', 'zoo_van_b1', 'timm:resnet18']
    assert benchmark.parse_shape('q=2,4,56,32') == ('q', dict(shape=[2, 4, 56, 32], dtype=None))
    assert benchmark.parse_shape('k=1,2:bf16') == ('k', dict(shape=[1, 2], dtype='bf16'))
    assert benchmark.create_model('timm:resnet18', num_classes=3).fc.out_features == 3


def test_input_spec_file(tmp_path):
    path = tmp_path / 'spec.yaml'
    path.write_text('q: [2, 4, 8, 16]\nk: {shape: [2, 4, 8, 16], dtype: bf16, requires_grad: false}\nis_causal: true\n')
    spec = benchmark.load_input_spec(str(path))
    assert spec == dict(q=dict(shape=[2, 4, 8, 16]), k=dict(shape=[2, 4, 8, 16], dtype='bf16', requires_grad=False),
                        is_causal=True)
    tensors, kwargs = benchmark._make_inputs(spec, torch.device('cpu'), torch.float32, requires_grad=True)
    assert [(t.dtype, t.requires_grad) for t in tensors] == [(torch.float32, True), (torch.bfloat16, False)]
    assert kwargs == dict(is_causal=True)
    path.write_text('- 1\n')
    with pytest.raises(benchmark.BenchmarkError, match='must be a mapping'):
        benchmark.load_input_spec(str(path))


def test_reports(tmp_path):
    rows = benchmark.benchmark_models(
        ['zoo_van_b0'], anchors=['tests.test_benchmark:tiny_net'], resolutions=[8, 16], batch_size=1, runs=2,
        warmup=0, model_kwargs={}, timer=fake_clock())
    benchmark.write_csv(rows, tmp_path / 'out.csv')
    with open(tmp_path / 'out.csv') as f:
        table = list(csv.DictReader(f))
    assert [(r['name'], r['role'], r['resolution']) for r in table] == [
        ('zoo_van_b0', 'model', '8'), ('tests.test_benchmark:tiny_net', 'anchor', '8'),
        ('zoo_van_b0', 'model', '16'), ('tests.test_benchmark:tiny_net', 'anchor', '16')]
    assert float(table[0]['throughput']) == 1.0 and float(table[0][benchmark.MEM_COLUMN]) > 0

    benchmark.write_markdown(rows, tmp_path / 'out.md')
    lines = (tmp_path / 'out.md').read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('| name |'))
    preamble = '\n'.join(lines[:header])
    assert 'peak_step_alloc_mib' in preamble and 'cpu allocator' in preamble
    body = [line.split('|')[1:-1] for line in lines[header + 2:]]
    assert [(c[0].strip(), c[1].strip(), c[2].strip()) for c in body] == [
        ('zoo_van_b0', 'model', '1x8²'), ('tests.test_benchmark:tiny_net', 'anchor', '1x8²'),
        ('zoo_van_b0', 'model', '1x16²'), ('tests.test_benchmark:tiny_net', 'anchor', '1x16²')]
    assert all(len(c) == len(lines[header].split('|')) - 2 for c in body)

    benchmark.write_plot(rows, tmp_path / 'out.png')
    image = matplotlib.image.imread(tmp_path / 'out.png')
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_kernel_rows_carry_achieved_bandwidth():
    shape = dict(shape=[2, 2, 16, 8])  # q, k, v and the output: 4 x 512 floats
    tensor_bytes = 2 * 2 * 16 * 8 * 4
    for mode, traffic in (('inference', 4 * tensor_bytes), ('train', (3 + 2 + 3) * tensor_bytes)):
        (row,) = benchmark.benchmark_kernel('torch.nn.functional:scaled_dot_product_attention',
                                            dict(q=shape, k=shape, v=shape), mode=mode, runs=2, warmup=0)
        assert row['gbps'] * 1e9 * row['latency_ms_median'] / 1e3 == pytest.approx(traffic)
        assert row['bandwidth_pct'] is None  # no card to compare against on the CPU
    table = benchmark.markdown_table([row])
    assert '| GB/s | % peak BW |' in table and 'compulsory traffic' in table
    assert benchmark.peak_bandwidth_gbps(torch.device('cpu')) is None
