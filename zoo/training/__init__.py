"""Training and evaluation of zoo models: configs, data, loops, checkpoints (used by tools/train.py, tools/eval.py)."""
from .checkpoint import load_training_state, rng_state, save_training_state, set_rng_state
from .config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config, parse_overrides
from .data import DigitsDataset, create_dataset, create_eval_transform, create_loader, create_train_transform
from .engine import evaluate, train_one_epoch
from .trainer import create_model_from_config, train

__all__ = [
    'ConfigError', 'TrainConfig', 'config_from_dict', 'config_to_dict', 'load_config', 'parse_overrides',
    'DigitsDataset', 'create_dataset', 'create_eval_transform', 'create_loader', 'create_train_transform',
    'evaluate', 'train_one_epoch', 'load_training_state', 'rng_state', 'save_training_state', 'set_rng_state',
    'create_model_from_config', 'train',
]
