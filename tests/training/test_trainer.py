import csv
import dataclasses
import logging

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
    # into a new output folder: before, its CSVs had no header rows (and no history)
    train(dataclasses.replace(cut, output=str(tmp_path / 'c')), resume=tmp_path / 'b' / 'out' / 'last.pth')
    train(cut, resume=tmp_path / 'b' / 'out' / 'last.pth')
    for name in ('steps.csv', 'summary.csv'):
        expected = (tmp_path / 'a' / 'out' / name).read_text()
        assert (tmp_path / 'b' / 'out' / name).read_text() == expected
        assert (tmp_path / 'c' / name).read_text() == expected, name
    assert load_training_state(tmp_path / 'c' / 'best.pth')['epoch'] == load_training_state(
        tmp_path / 'c' / 'last.pth')['best_epoch']


def test_resume_with_more_epochs_rebuilds_the_schedule_and_says_so(tmp_path, caplog):
    """Before, the checkpoint's cosine schedule (over the old number of epochs) was loaded as it was: the lr stayed
    at its floor for every added epoch."""
    opts = ['optim.lr=0.01', 'sched.min_lr=1.0e-4', 'sched.warmup_epochs=0']
    train(_folder_config(tmp_path / 'long', 'epochs=4', *opts))
    short = _folder_config(tmp_path / 'short', 'epochs=2', *opts)
    train(short)
    longer = dataclasses.replace(short, epochs=4)
    with caplog.at_level(logging.WARNING, logger='zoo.training.trainer'):
        train(longer, resume=tmp_path / 'short' / 'out' / 'last.pth')
    assert ('Resuming with another schedule (epochs 2 -> 4): the cosine schedule is rebuilt for 4 epochs and '
            'continues at epoch 2 with lr 5.050e-03 (the checkpoint\'s schedule had 1.000e-04)') in caplog.text

    def lrs(folder, epochs):
        with open(folder / 'out' / 'steps.csv') as f:
            return [float(r['lr']) for r in csv.DictReader(f) if int(r['epoch']) in epochs]

    # epochs 2 and 3 follow the 4-epoch schedule, as in a run planned for 4 epochs from the start
    assert lrs(tmp_path / 'short', (2, 3)) == pytest.approx(lrs(tmp_path / 'long', (2, 3)), rel=1e-12)
    assert lrs(tmp_path / 'short', (2,))[0] > 10 * 1e-4

    # fewer epochs than the checkpoint has done: one clear line, nothing trained
    with pytest.raises(ConfigError, match=r'epochs: 3, but checkpoint .*last.pth has finished epoch 3 .*nothing is '
                                          r'left to train; set epochs above 4'):
        train(dataclasses.replace(short, epochs=3), resume=tmp_path / 'short' / 'out' / 'last.pth')


def test_resume_with_another_model_is_refused_in_one_line(tmp_path):
    cfg = _folder_config(tmp_path, 'epochs=1')
    train(cfg)
    checkpoint = tmp_path / 'out' / 'last.pth'
    with pytest.raises(ConfigError, match=r"model.name: 'zoo_van_b1', but checkpoint .*last.pth was trained with "
                                          r"'zoo_van_b0'; resume with model.name=zoo_van_b0"):
        train(dataclasses.replace(cfg, epochs=2, model=dataclasses.replace(cfg.model, name='zoo_van_b1')),
              resume=checkpoint)
    wider = dict(cfg.model.kwargs, embed_dims=[8, 16, 24, 48])
    with pytest.raises(ConfigError) as e:
        train(dataclasses.replace(cfg, epochs=2, model=dataclasses.replace(cfg.model, kwargs=wider)), resume=checkpoint)
    message = str(e.value)
    assert message.startswith("model.kwargs: {'embed_dims': [8, 16, 24, 48], ") and '\n' not in message
    assert 'whose weights do not fit (' in message and 'keys of another shape: ' in message and len(message) < 700
    with pytest.raises(ConfigError, match=r"optim.name: 'sgd', but checkpoint .* was trained with 'adamw'"):
        train(dataclasses.replace(cfg, epochs=2, optim=dataclasses.replace(cfg.optim, name='sgd')), resume=checkpoint)
