import copy

import pytest
import torch

from zoo.training.config import ModelConfig
from zoo.training.engine import evaluate, train_one_epoch
from zoo.training.trainer import create_model_from_config

from .helpers import TINY_VAN


def _model(name='zoo_van_b0', kwargs=TINY_VAN):
    torch.manual_seed(0)
    return create_model_from_config(ModelConfig(name=name, kwargs=kwargs), num_classes=3)


def _batches(n, size):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 16, 16, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _grads_after_one_update(model, loader, accum_steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.)
    grads = {}
    # the summed gradients, read when the optimizer steps (before train_one_epoch zeroes them)
    optimizer.register_step_pre_hook(lambda *_: grads.update(
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    metrics = train_one_epoch(
        model, loader, optimizer, torch.nn.CrossEntropyLoss(), torch.device('cpu'), 0, 0, accum_steps=accum_steps)
    return grads, metrics


def test_accumulated_gradients_equal_one_large_batch():
    # MambaOut: no batch norm and no dropout by default, so batches of 4 + 4 and of 8 see the same function
    model = _model('zoo_mambaout_femto', {'depths': [1, 1, 1, 1], 'dims': [8, 16, 24, 32]})
    small = _batches(2, 4)
    large = [(torch.cat([x for x, _ in small]), torch.cat([y for _, y in small]))]
    grads_small, metrics = _grads_after_one_update(copy.deepcopy(model), small, accum_steps=2)
    grads_large, _ = _grads_after_one_update(copy.deepcopy(model), large, accum_steps=1)
    assert metrics['num_updates'] == 1
    assert grads_small.keys() == grads_large.keys() and grads_small
    for name in grads_small:
        torch.testing.assert_close(grads_small[name], grads_large[name], rtol=1e-4, atol=1e-6)


def test_last_short_group_and_update_callback():
    model = _model()
    updates = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics = train_one_epoch(
        model, _batches(5, 4), optimizer, torch.nn.CrossEntropyLoss(), torch.device('cpu'), 0, 10, accum_steps=2,
        clip_grad=1.0, on_update=lambda n, loss, lr: updates.append((n, loss, lr)))
    assert metrics['num_updates'] == 13  # 5 batches in groups of 2, 2, 1
    assert [n for n, _, _ in updates] == [11, 12, 13]
    assert all(loss > 0 and lr == 1e-3 for _, loss, lr in updates)


def test_bf16_autocast_trains():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = train_one_epoch(model, _batches(2, 4), optimizer, torch.nn.CrossEntropyLoss(), torch.device('cpu'), 0,
                              0, amp_dtype=torch.bfloat16)
    assert torch.isfinite(torch.tensor(metrics['loss']))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_evaluate_counts_and_features():
    model = _model().eval()
    batches = _batches(3, 4)
    metrics = evaluate(model, batches, torch.device('cpu'), num_classes=3, features=True)
    images = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    with torch.no_grad():
        logits = model(images)
        pooled = model.forward_head(model.forward_features(images), pre_logits=True)
    predicted = logits.argmax(-1)
    assert metrics['count'] == 12
    assert metrics['top1'] == pytest.approx(100. * (predicted == targets).float().mean().item())
    assert metrics['top5'] == 100.  # 3 classes: top-k is capped at the number of classes
    assert metrics['loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(targets, predicted):
        expected[t, p] += 1
    assert torch.equal(metrics['confusion'], expected)
    torch.testing.assert_close(metrics['features'], pooled)
    assert torch.equal(metrics['targets'], targets)
