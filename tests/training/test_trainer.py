import csv

import pytest
import torch

from zoo.training.checkpoint import load_training_state
from zoo.training.config import ConfigError, ModelConfig, load_config
from zoo.training.trainer import create_model_from_config, resolve_amp_dtype, train

from .helpers import TINY_VAN_OPT, make_image_folder


def _folder_config(tmp_path, *overrides):
    root = make_image_folder(tmp_path / "data")
    return load_config(None, [
        TINY_VAN_OPT, 'data.dataset=folder', f'data.root={root}', 'data.image_size=16', 'data.batch_size=4',
        'epochs=2', f'output={tmp_path / "out"}', 'log.progress=false', *overrides])


@pytest.mark.parametrize('overrides', [
    ['optim.name=sgd', 'optim.lr=0.05', 'sched.name=step', 'sched.decay_epochs=1', 'sched.step_on_epochs=true'],
    ['sched.warmup_epochs=1', 'ema.enabled=true', 'aug.mixup=0.8', 'aug.cutmix=1.0', 'amp.enabled=true',
     'model.grad_checkpointing=true', 'optim.accum_steps=2', 'optim.clip_grad=1.0'],
])
def test_train_on_an_image_folder(tmp_path, overrides):
    cfg = _folder_config(tmp_path, *overrides)
    metrics = train(cfg)
    assert metrics['epoch'] == 1 and 0 <= metrics['eval_top1'] <= 100
    out = tmp_path / 'out'
    with open(out / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0', '1']
    with open(out / 'steps.csv') as f:
        steps = list(csv.DictReader(f))
    accum = cfg.optim.accum_steps
    assert len(steps) == 2 * -(-3 // accum)  # 12 images in batches of 4, grouped by accum_steps
    checkpoint = load_training_state(out / 'last.pth')
    assert checkpoint['epoch'] == 1 and checkpoint['classes'] == ['blue', 'green', 'red']
    assert checkpoint['config']['model']['name'] == 'zoo_van_b0'
    assert (checkpoint['ema'] is not None) == cfg.ema.enabled
    lrs = [float(s['lr']) for s in steps]
    if cfg.sched.name == 'step':
        assert lrs[:3] == [0.05] * 3 and lrs[3:] == pytest.approx([0.005] * 3)  # decays once, after epoch 0
    else:
        assert lrs[0] == pytest.approx(cfg.sched.warmup_lr) and max(lrs) > lrs[0]  # warms up


def test_create_model_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.name: 'zoo_nope' is not a registered model; zoo models: .*zoo_van_b0"):
        create_model_from_config(ModelConfig(name='zoo_nope'))
    with pytest.raises(ConfigError, match="model.kwargs: {'widths': 3} not accepted by zoo_van_b0"):
        create_model_from_config(ModelConfig(name='zoo_van_b0', kwargs={'widths': 3}))
    cfg = ModelConfig(name='zoo_van_b0', kwargs={'depths': [1, 1, 1, 1]}, grad_checkpointing=True)
    model = create_model_from_config(cfg, 4)
    assert model.num_classes == 4 and model.grad_checkpointing


def test_unknown_optimizer(tmp_path):
    with pytest.raises(ConfigError, match="optim.name: 'adamww' is not an optimizer timm knows"):
        train(_folder_config(tmp_path, 'optim.name=adamww'))


def test_amp_dtype():
    cpu = torch.device('cpu')
    assert resolve_amp_dtype(False, 'float16', cpu) is None
    assert resolve_amp_dtype(True, 'bfloat16', cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="amp.dtype: 'float16' needs a CUDA device"):
        resolve_amp_dtype(True, 'float16', cpu)


def test_stop_after_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    full = _folder_config(tmp_path / 'a', 'epochs=3', 'aug.mixup=0.5', 'model.kwargs.drop_path_rate=0.1')
    train(full)
    cut = _folder_config(tmp_path / 'b', 'epochs=3', 'aug.mixup=0.5', 'model.kwargs.drop_path_rate=0.1')
    assert train(cut, stop_after_epoch=2)['epoch'] == 1
    assert load_training_state(tmp_path / 'b' / 'out' / 'last.pth')['epoch'] == 1
    train(cut, resume=tmp_path / 'b' / 'out' / 'last.pth')
    for name in ('steps.csv', 'summary.csv'):
        assert (tmp_path / 'b' / 'out' / name).read_text() == (tmp_path / 'a' / 'out' / name).read_text()
