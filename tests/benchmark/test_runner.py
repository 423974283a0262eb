"""zoo.benchmark.runner: resolving models, anchors and kernels, rows, FLOPs and params. Nothing asserts on time."""
import pytest
import torch

from zoo.benchmark import runner
from zoo.benchmark.measure import MEM_COLUMN
from zoo.benchmark.specs import MODES, BenchmarkError

from .toys import SDPA, TINY_MAMBAOUT, fake_clock, naive_attention

TINY = 'tests.benchmark.toys:tiny_net'
NAIVE = 'tests.benchmark.toys:naive_attention'


def test_flops_and_params_of_tiny_net():
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)  # 2 * output elements * MACs per output
    linear = 2 * 256 * 10
    (row,) = runner.benchmark_models([TINY], resolutions=[8], batch_size=2, runs=2, warmup=0, timer=fake_clock())
    assert row['params_m'] * 1e6 == pytest.approx(4 * 27 + 4 + 256 * 10 + 10)
    assert row['gflops'] * 1e9 == pytest.approx(conv + linear)
    # backward: the linear's input and weight gradients, the conv's weight gradient (its input needs none)
    (train,) = runner.benchmark_models(
        [TINY], resolutions=[8], batch_size=2, runs=2, warmup=0, mode='train', timer=fake_clock())
    assert train['gflops'] * 1e9 == pytest.approx(conv + linear + conv + 2 * linear)


def test_rows_from_fake_timer():
    (row,) = runner.benchmark_models([TINY], resolutions=[8], batch_size=4, runs=3, warmup=0, timer=fake_clock())
    assert row['latency_ms_median'] == row['latency_ms_min'] == row['latency_ms_max'] == 1000.0
    assert row['throughput'] == 4.0 and row['unit'] == 'img/s' and row['rel_throughput'] == 1.0
    assert (row['name'], row['role'], row['resolution'], row['batch_size']) == (TINY, 'model', 8, 4)
    assert 'background_load' not in row


def test_zoo_model_beside_timm_anchor():
    rows = runner.benchmark_models(
        ['zoo_mambaout_femto'], resolutions=[32, 48], batch_size=2, runs=2, warmup=1, model_kwargs=TINY_MAMBAOUT)
    assert [(r['name'], r['role'], r['resolution']) for r in rows] == [
        ('zoo_mambaout_femto', 'model', 32), ('timm:mambaout_femto', 'anchor', 32),
        ('zoo_mambaout_femto', 'model', 48), ('timm:mambaout_femto', 'anchor', 48)]
    assert {r['group'] for r in rows} == {'zoo_mambaout_femto'}
    # the same architecture: same parameters and FLOPs
    assert rows[0]['params_m'] == rows[1]['params_m'] and rows[0]['gflops'] == pytest.approx(rows[1]['gflops'])
    assert rows[2]['gflops'] > rows[0]['gflops']
    assert all(r['throughput'] > 0 and r[MEM_COLUMN] > 0 for r in rows)


def test_explicit_anchors_and_train_mode():
    rows = runner.benchmark_models(
        ['zoo_van_b0'], anchors=[TINY], resolutions=[8], batch_size=2, runs=2, warmup=0, mode='train',
        channels_last=True)
    assert [(r['name'], r['role']) for r in rows] == [('zoo_van_b0', 'model'), (TINY, 'anchor')]
    assert all(r['mode'] == 'train' and r['channels_last'] for r in rows)


def test_compile_warmup_is_forced():
    (row,) = runner.benchmark_models(
        [TINY], resolutions=[8], batch_size=1, runs=2, warmup=0, compile='eager', timer=fake_clock())
    assert row['compile'] == 'eager' and row['warmup'] == 1


def test_kernel_sdpa_vs_reference():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    for causal in (False, True):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(naive_attention(q, k, v, is_causal=causal), expected)
    shape = dict(shape=[2, 2, 16, 8])
    for mode in MODES:
        rows = runner.benchmark_kernel(SDPA, dict(q=shape, k=shape, v=shape), anchors=[NAIVE], mode=mode, runs=2,
                                       warmup=1)
        assert [(r['name'], r['role']) for r in rows] == [(SDPA, 'kernel'), (NAIVE, 'anchor')]
        assert all(r['unit'] == 'calls/s' and r['inputs'] == 'q=2x2x16x8 k=2x2x16x8 v=2x2x16x8' for r in rows)
    matmuls = 2 * 2 * (2 * 2 * 16 * 16 * 8)  # QK^T and AV, B*H*L*L*D multiply-adds each
    assert rows[1]['gflops'] * 1e9 == pytest.approx(3 * matmuls)  # train: forward + two gradients per matmul
    fwd = runner.benchmark_kernel(SDPA, dict(q=shape, k=shape, v=shape, is_causal=True), anchors=[NAIVE], runs=1,
                                  warmup=0)
    assert fwd[0]['gflops'] * 1e9 == pytest.approx(matmuls) == fwd[1]['gflops'] * 1e9


def test_kernel_rows_carry_achieved_bandwidth():
    shape = dict(shape=[2, 2, 16, 8])  # q, k, v and the output: 4 x 512 floats
    tensor_bytes = 2 * 2 * 16 * 8 * 4
    for mode, traffic in (('inference', 4 * tensor_bytes), ('train', (3 + 2 + 3) * tensor_bytes)):
        (row,) = runner.benchmark_kernel(SDPA, dict(q=shape, k=shape, v=shape), mode=mode, runs=2, warmup=0)
        assert row['gbps'] * 1e9 * row['latency_ms_median'] / 1e3 == pytest.approx(traffic)
        assert row['bandwidth_pct'] is None  # no card to compare against on the CPU


def test_make_inputs():
    spec = dict(q=dict(shape=[2, 4, 8, 16]), k=dict(shape=[2, 4, 8, 16], dtype='bf16', requires_grad=False),
                idx=dict(shape=[3], dtype='fp32', requires_grad=True), is_causal=True)
    tensors, kwargs = runner.make_inputs(spec, torch.device('cpu'), torch.float32, requires_grad=True)
    assert [(t.dtype, t.requires_grad) for t in tensors] == [
        (torch.float32, True), (torch.bfloat16, False), (torch.float32, True)]
    assert kwargs == dict(is_causal=True)
    again, _ = runner.make_inputs(spec, torch.device('cpu'), torch.float32, requires_grad=False)
    assert torch.equal(again[0], tensors[0]) and not again[0].requires_grad  # seeded: the same tensors every call


@pytest.mark.parametrize('call, message', [
    (lambda: runner.create_model('zoo_nope'), "unknown model 'zoo_nope'; expected a zoo model"),
    (lambda: runner.create_model('timm:nope'), "unknown model 'timm:nope'"),
    (lambda: runner.create_model('tests.benchmark.toys:not_a_model'), 'returned str, expected a torch.nn.Module'),
    (lambda: runner.resolve_callable('tests.benchmark.toys:missing'), "has no attribute 'missing'"),
    (lambda: runner.resolve_callable('no_such_module_xyz:f'), "cannot import module 'no_such_module_xyz'"),
    (lambda: runner.resolve_callable('torch.nn.functional'), 'expected module.sub:callable'),
    (lambda: runner.resolve_callable('torch:__version__'), 'is not callable'),
    (lambda: runner.expand_models(['zoo_nothing_*']), "pattern 'zoo_nothing_\\*' matches no zoo model"),
    (lambda: runner.benchmark_models(['zoo_van_b0'], mode='eval'), "unknown mode 'eval'; allowed: inference, train"),
    (lambda: runner.benchmark_kernel('torch:add', dict(alpha=1)), 'needs at least one tensor input'),
    (lambda: runner.compare_under_load(lambda background_load: [], 0), 'needs a background load of >= 1 threads'),
])
def test_errors_name_what_is_wrong(call, message):
    with pytest.raises(BenchmarkError, match=message):
        call()


def test_names():
    assert runner.default_anchors('zoo_mambaout_femto') == ['timm:mambaout_femto']
    assert runner.default_anchors('zoo_van_b0') == []
    assert runner.default_anchors('timm:resnet18') == []
    assert runner.expand_models(['zoo_van_b[01]', 'timm:resnet18']) == ['zoo_van_b0', 'zoo_van_b1', 'timm:resnet18']
    assert runner.zoo_models('van_b[01]') == ['zoo_van_b0', 'zoo_van_b1']  # the prefix may be left out
    assert runner.create_model('timm:resnet18', num_classes=3).fc.out_features == 3


def test_compare_under_load_marks_idle_and_loaded_rows():
    calls = []

    def run(background_load):
        calls.append(background_load)
        return [dict(name='k', background_load=background_load)] if background_load else [dict(name='k')]

    rows = runner.compare_under_load(run, 3)
    assert calls == [0, 3]
    assert [r['background_load'] for r in rows] == [0, 3]
