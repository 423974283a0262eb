from pathlib import Path

import pytest

from zoo.training.config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config, parse_overrides

CONFIGS = Path(__file__).parents[2] / 'configs' / 'classification'


def test_defaults_and_round_trip():
    cfg = config_from_dict({})
    assert cfg == TrainConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize('name', sorted(p.name for p in CONFIGS.glob('*.yaml')))
def test_shipped_configs_parse(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.name.startswith('zoo_')


def test_imagenet_config_inherits_bases():
    cfg = load_config(CONFIGS / 'van_b0_imagenet.yaml')
    assert cfg.model.name == 'zoo_van_b0'
    assert cfg.model.kwargs == {'drop_path_rate': 0.1}
    assert cfg.data.dataset == 'folder' and cfg.data.batch_size == 128
    assert cfg.epochs == 300 and cfg.sched.warmup_epochs == 5
    assert cfg.aug.mixup == 0.8 and cfg.ema.enabled and cfg.amp.dtype == 'bfloat16'


def test_leaf_overrides_base(tmp_path):
    (tmp_path / 'base.yaml').write_text('epochs: 5\noptim: {lr: 0.1, weight_decay: 0.01}\n')
    (tmp_path / 'leaf.yaml').write_text('_base_: base.yaml\noptim: {lr: 0.2}\n')
    cfg = load_config(tmp_path / 'leaf.yaml')
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.weight_decay) == (5, 0.2, 0.01)


def test_overrides():
    assert parse_overrides(['optim.lr=0.01', 'model.kwargs={depths: [1, 2]}', 'aug.auto_augment=rand-m9']) == {
        'optim': {'lr': 0.01}, 'model': {'kwargs': {'depths': [1, 2]}}, 'aug': {'auto_augment': 'rand-m9'}}
    cfg = load_config(CONFIGS / 'demo_digits.yaml', ['optim.lr=1', 'aug.scale=[0.5, 1]', 'epochs=2'])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.aug.scale == (0.5, 1.0) and cfg.epochs == 2


def test_numbers_without_a_dot_are_numbers_where_the_key_is_a_number(tmp_path):
    """The README's own `--opt optim.lr=2e-3`: YAML 1.1 reads 2e-3 (no dot) as a string, which was refused."""
    cfg = load_config(None, ['optim.lr=2e-3', 'sched.min_lr=1E-6', 'optim.clip_grad=5e0', 'aug.scale=[8e-2, 1]'])
    assert (cfg.optim.lr, cfg.sched.min_lr, cfg.optim.clip_grad, cfg.aug.scale) == (2e-3, 1e-6, 5.0, (0.08, 1.0))
    (tmp_path / 'c.yaml').write_text('optim: {lr: 2e-3, weight_decay: .05}\n')
    assert load_config(tmp_path / 'c.yaml').optim.lr == 0.002
    # only where the key is a number: strings stay strings, and a non-number is still refused
    assert load_config(None, ['aug.auto_augment=1e-3']).aug.auto_augment == '1e-3'
    with pytest.raises(ConfigError, match="optim.lr: expected float, got '2e-3x' \\(str\\)"):
        load_config(None, ['optim.lr=2e-3x'])
    with pytest.raises(ConfigError, match="epochs: expected int, got '1e3' \\(str\\)"):
        load_config(None, ['epochs=1e3'])


@pytest.mark.parametrize('overrides, message', [
    (['optim.lrr=0.1'], "unknown config key 'optim.lrr'; allowed keys in optim: name, lr,"),
    (['bogus=1'], "unknown config key 'bogus'; allowed keys: model, data,"),
    (['epochs=ten'], "epochs: expected int, got 'ten' (str)"),
    (['optim.lr=true'], 'optim.lr: expected float, got True (bool)'),
    (['aug.scale=[0.5]'], 'aug.scale: expected a list of 2 values, got [0.5]'),
    (['sched.name=linear'], "sched.name: 'linear' is not one of 'cosine', 'step'"),
    (['data.dataset=folder'], "data.root: dataset 'folder' needs the ImageFolder root"),
    (['epochs=0'], 'epochs: must be >= 1, got 0'),
    (['optim'], "override: 'optim' is not key=value"),
    (['optim=3'], 'optim: expected a mapping of keys, got 3'),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert '\n' not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(tmp_path / 'missing.yaml')
    (tmp_path / 'bad.yaml').write_text('optim: [1\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(tmp_path / 'bad.yaml')
    (tmp_path / 'loop.yaml').write_text('_base_: loop.yaml\n')
    with pytest.raises(ConfigError, match='includes itself'):
        load_config(tmp_path / 'loop.yaml')
