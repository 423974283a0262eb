import numpy as np
import pytest
import torch

from zoo.training.config import ConfigError, ModelConfig, load_config
from zoo.training.evaluator import confusion_summary, is_training_checkpoint, load_model, save_features
from zoo.training.trainer import create_model, train

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
    model, state = load_model(checkpoint=tmp_path / 'last.pth')
    assert state['classes'] == [str(i) for i in range(10)]
    assert all(torch.equal(v, state['model'][k]) for k, v in model.state_dict().items())
    ema_model, _ = load_model(checkpoint=tmp_path / 'last.pth', use_ema=True)
    assert any(not torch.equal(v, state['model'][k]) for k, v in ema_model.state_dict().items())


def test_load_model_from_a_weights_file(tmp_path):
    source = create_model(ModelConfig(name='zoo_van_b0', kwargs=TINY_VAN), num_classes=3)
    torch.save(source.state_dict(), tmp_path / 'weights.pth')
    assert not is_training_checkpoint(tmp_path / 'weights.pth')
    model, state = load_model('zoo_van_b0', tmp_path / 'weights.pth', model_kwargs={**TINY_VAN, 'num_classes': 3})
    assert state is None
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match='--model: needed'):
        load_model(checkpoint=tmp_path / 'weights.pth')


def test_save_features(tmp_path):
    features, targets = torch.randn(4, 8), torch.tensor([0, 1, 1, 0])
    with np.load(save_features(tmp_path / 'f.npz', features, targets, ['x', 'y'])) as saved:
        np.testing.assert_array_equal(saved['features'], features.numpy())
        assert saved['targets'].tolist() == [0, 1, 1, 0] and saved['classes'].tolist() == ['x', 'y']
    saved = torch.load(save_features(tmp_path / 'f.pt', features, targets), weights_only=True)
    assert torch.equal(saved['features'], features) and torch.equal(saved['targets'], targets)
    with pytest.raises(ConfigError, match='must end in .pt or .npz'):
        save_features(tmp_path / 'f.csv', features, targets)
