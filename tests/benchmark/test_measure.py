"""zoo.benchmark.measure: statistics, interleaving, peak memory, bandwidth. Nothing here asserts on time."""
import pytest
import torch
import torch.nn as nn

from zoo.benchmark import measure, runner
from zoo.benchmark.specs import BenchmarkError


def test_summarize():
    stats = measure.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats == measure.Stats(median=3.0, q1=2.0, q3=4.0, min=1.0, max=5.0)
    assert measure.summarize([7.0]) == measure.Stats(7.0, 7.0, 7.0, 7.0, 7.0)
    assert measure.summarize([1.0, 3.0]).median == 2.0


def test_interleaved_times_order_and_durations():
    now = [0.0]
    log = []

    def make_step(name, cost):
        def step():
            log.append(name)
            now[0] += cost
        return step

    syncs = []
    times = measure.interleaved_times(
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

    times = measure.interleaved_times([step, step], runs=4, warmup=0, timer=lambda: calls[0] ** 2)
    assert [measure.summarize(t).median for t in times] == [7.0, 9.0]  # sequential runs would give 4 vs 12


def test_interleaved_times_rejects_no_runs():
    with pytest.raises(BenchmarkError, match='runs must be >= 1'):
        measure.interleaved_times([lambda: None], runs=0)


def test_peak_memory_cpu_counts_allocations_during_the_call():
    resident = torch.ones(1 << 20)  # 4 MiB live before the call: not counted

    def step():
        a = torch.empty_like(resident)  # 4 MiB
        b = resident[: 1 << 19] + 1  # 2 MiB, while a is live
        del a, b
        return torch.empty(1 << 18)  # 1 MiB after both were freed

    peak = measure.peak_memory(step, torch.device('cpu'))
    assert 6 * 2 ** 20 <= peak < 6 * 2 ** 20 + 4096


def test_peak_memory_train_step_includes_gradients():
    model = nn.Linear(512, 512, bias=False)
    x = torch.randn(1, 512)
    step = runner.model_step(model, x, list(model.parameters()), 'train')
    assert measure.peak_memory(step, torch.device('cpu')) >= 512 * 512 * 4
    assert model.weight.grad is None


def test_min_traffic_bytes_and_no_cpu_peak_bandwidth():
    q = torch.randn(2, 2, 16, 8, requires_grad=True)
    tensor_bytes = q.numel() * 4
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert measure.min_traffic_bytes(sdpa, [q, q, q], {}, 'inference') == 4 * tensor_bytes
    assert measure.min_traffic_bytes(sdpa, [q, q, q], {}, 'train') == (3 + 2 + 3) * tensor_bytes
    assert measure.peak_bandwidth_gbps(torch.device('cpu')) is None  # no card to compare against


def test_count_flops_of_cpu_attention():
    q = torch.randn(1, 2, 16, 8)
    flops = measure.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * 2 * (2 * 16 * 16 * 8)  # QK^T and AV
    assert measure.count_flops(lambda: q.exp()) is None


def test_machine_name_names_the_cpu_and_its_cores():
    name = measure.machine_name(torch.device('cpu'))
    assert name.endswith(' cores') and len(name) > len(' cores')
