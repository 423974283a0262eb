from collections import Counter

import pytest
import torch

from zoo.training.config import AugConfig, ConfigError, DataConfig, ModelConfig
from zoo.training.data import (
    DigitsDataset,
    create_dataset,
    create_eval_transform,
    create_loader,
    create_train_transform,
    model_data_config,
)
from zoo.training.trainer import create_model_from_config

from .helpers import TINY_VAN, make_image_folder


def test_digits_split_is_held_out_stratified_and_fixed():
    train, val = DigitsDataset('train', image_size=16), DigitsDataset('val', image_size=16)
    assert len(train) + len(val) == 1797 and abs(len(val) - 0.25 * 1797) < 1
    assert not set(train.indices) & set(val.indices)
    everything = Counter(train.targets + val.targets)
    assert all(abs(n - everything[c] / 4) < 1 for c, n in Counter(val.targets).items())
    assert (DigitsDataset('val', image_size=16).indices == val.indices).all()
    image, target = val[0]
    assert image.size == (16, 16) and image.mode == 'RGB' and target == val.targets[0]


def test_transforms_come_from_the_model_cfg():
    model = create_model_from_config(ModelConfig(name='zoo_van_b0', kwargs=TINY_VAN), num_classes=10)
    data_config = model_data_config(model, image_size=24)
    assert data_config['input_size'] == (3, 24, 24)
    assert data_config['mean'] == (0.5, 0.5, 0.5)  # VAN's pretrained cfg, not ImageNet's default
    dataset = DigitsDataset('val', image_size=16, transform=create_train_transform(data_config, AugConfig()))
    assert dataset[0][0].shape == (3, 24, 24)
    dataset.transform = create_eval_transform(data_config)
    assert dataset[0][0].shape == (3, 24, 24)


def test_image_folder(tmp_path):
    make_image_folder(tmp_path)
    cfg = DataConfig(dataset='folder', root=str(tmp_path))
    train = create_dataset(cfg, 'train', None, 16)
    assert train.classes == ['blue', 'green', 'red'] and len(train) == 12
    with pytest.raises(ConfigError, match="has no folder 'valid' \\(data.val_split\\)"):
        create_dataset(DataConfig(dataset='folder', root=str(tmp_path), val_split='valid'), 'val', None, 16)


def test_loader_order_replays_from_its_generator_state():
    dataset = torch.utils.data.TensorDataset(torch.arange(20), torch.arange(20))
    loader = create_loader(dataset, batch_size=4, is_training=True, seed=1)
    state = loader.generator.get_state()
    first = [x.tolist() for x, _ in loader]
    assert [x.tolist() for x, _ in loader] != first  # a new order each epoch
    loader.generator.set_state(state)
    assert [x.tolist() for x, _ in loader] == first
