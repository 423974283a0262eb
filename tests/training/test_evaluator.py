import argparse
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zoo.training.config import ConfigError, ModelConfig, load_config
from zoo.training.evaluator import (
    EvalJob,
    confusion_summary,
    is_training_checkpoint,
    load_model_for_eval,
    run_evaluation,
    save_features,
)
from zoo.training.trainer import create_model_from_config, train

from .helpers import TINY_DIGITS_OPTS, TINY_VAN


def test_confusion_summary():
    confusion = torch.tensor([[5, 0, 0], [1, 3, 0], [0, 4, 0]])
    recall, confused = confusion_summary(confusion, ['a', 'b', 'c'], top=2)
    assert recall == 'per-class recall (lowest first): c 0.0% (0/4), b 75.0% (3/4)'
    assert confused == 'most confused (true -> predicted): c -> b: 4, b -> a: 1'
    assert confusion_summary(torch.eye(2, dtype=torch.int64))[1].endswith('none, every image is classified correctly')


def test_load_model_from_a_training_checkpoint(tmp_path):
    cfg = load_config(None, [*TINY_DIGITS_OPTS, 'epochs=1', 'ema.enabled=true', f'output={tmp_path}',
                             'log.progress=false'])
    train(cfg)
    assert is_training_checkpoint(tmp_path / 'last.pth')
    model, state = load_model_for_eval(checkpoint=tmp_path / 'last.pth')
    assert state['classes'] == [str(i) for i in range(10)]
    assert all(torch.equal(v, state['model'][k]) for k, v in model.state_dict().items())
    ema_model, _ = load_model_for_eval(checkpoint=tmp_path / 'last.pth', use_ema=True)
    assert any(not torch.equal(v, state['model'][k]) for k, v in ema_model.state_dict().items())


def test_load_model_from_a_weights_file(tmp_path):
    source = create_model_from_config(ModelConfig(name='zoo_van_b0', kwargs=TINY_VAN), num_classes=3)
    torch.save(source.state_dict(), tmp_path / 'weights.pth')
    assert not is_training_checkpoint(tmp_path / 'weights.pth')
    model, state = load_model_for_eval(
        'zoo_van_b0', tmp_path / 'weights.pth', model_kwargs={**TINY_VAN, 'num_classes': 3})
    assert state is None
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match='model: needed'):
        load_model_for_eval(checkpoint=tmp_path / 'weights.pth')


def test_save_features(tmp_path):
    features, targets = torch.randn(4, 8), torch.tensor([0, 1, 1, 0])
    with np.load(save_features(tmp_path / 'f.npz', features, targets, ['x', 'y'])) as saved:
        np.testing.assert_array_equal(saved['features'], features.numpy())
        assert saved['targets'].tolist() == [0, 1, 1, 0] and saved['classes'].tolist() == ['x', 'y']
    saved = torch.load(save_features(tmp_path / 'f.pt', features, targets), weights_only=True)
    assert torch.equal(saved['features'], features) and torch.equal(saved['targets'], targets)
    with pytest.raises(ConfigError, match='must end in .pt or .npz'):
        save_features(tmp_path / 'f.csv', features, targets)


def test_files_the_hub_reads_are_weights_files_not_training_checkpoints(tmp_path):
    """Weights pickled beside training args (Vim, LITv2 and DeiT-style releases) and safetensors named .pth are
    read as the hub reads them; before, the strict training-state loader refused them."""
    source = create_model_from_config(ModelConfig(name='zoo_van_b0', kwargs=TINY_VAN), num_classes=3)
    torch.save({'model': source.state_dict(), 'epoch': 299, 'args': argparse.Namespace(lr=1e-3)},
               tmp_path / 'release.pth')
    save_file(source.state_dict(), tmp_path / 'converted.pth')
    for name in ('release.pth', 'converted.pth'):
        assert not is_training_checkpoint(tmp_path / name)
        model, state = load_model_for_eval('zoo_van_b0', tmp_path / name, model_kwargs={**TINY_VAN, 'num_classes': 3})
        assert state is None
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_model_name_that_contradicts_the_training_checkpoint_is_refused(tmp_path):
    train(load_config(None, [*TINY_DIGITS_OPTS, 'epochs=1', f'output={tmp_path}', 'log.progress=false']))
    with pytest.raises(ConfigError, match="model: 'zoo_van_b1' given, but training checkpoint .* holds a 'zoo_van_b0'"):
        load_model_for_eval('zoo_van_b1', tmp_path / 'last.pth')
    model, _ = load_model_for_eval('zoo_van_b0', tmp_path / 'last.pth')  # naming the same model is fine
    assert model.num_classes == 10


@pytest.mark.parametrize('change, message', [
    (dict(batch_size=0), 'batch_size: must be >= 1, got 0'),
    (dict(image_size=0), 'image_size: must be >= 1, got 0'),
    (dict(workers=-1), 'workers: must be >= 0, got -1'),
    (dict(features='f.csv'), "features: 'f.csv' must end in .pt or .npz"),
    (dict(model=None), 'model: give a model name'),
    (dict(use_ema=True), 'use_ema: only a training checkpoint carries EMA weights'),
    (dict(digits=False), 'data_dir: give an image folder or digits'),
])
def test_eval_job_errors_name_the_field(change, message):
    job = EvalJob(**{**dict(model='zoo_van_b0', model_kwargs=TINY_VAN, digits=True, image_size=16), **change})
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        run_evaluation(job)


def test_evaluating_random_weights_warns(caplog):
    job = EvalJob(model='zoo_van_b0', model_kwargs={**TINY_VAN, 'num_classes': 10}, digits=True, image_size=16)
    with caplog.at_level(logging.WARNING, logger='zoo.training.evaluator'):
        result = run_evaluation(job)
    assert 'zoo_van_b0 has random weights' in caplog.text
    assert result.num_images == result.metrics['count'] == 450  # the held-out quarter of the digits
