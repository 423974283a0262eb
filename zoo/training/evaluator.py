"""Evaluation of a zoo model: which model and weights, which data, and the report (behind tools/eval.py).

A model comes from a zoo name (+ its pretrained weights, or a weights file in the authors' format or ours) or
from a training checkpoint written by :func:`zoo.training.train` (which names its model, classes and data).
Errors name the :class:`EvalJob` field (or the config key) that is wrong, as :class:`ConfigError`.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from zoo import hub

from .config import ConfigError, DataConfig, ModelConfig, config_from_dict
from .data import create_dataset, create_eval_transform, create_loader, model_data_config
from .engine import evaluate
from .trainer import DIGITS_IMAGE_SIZE, create_model_from_config, resolve_amp_dtype, resolve_device

__all__ = [
    'EvalJob', 'EvalResult', 'run_evaluation', 'is_training_checkpoint', 'load_model_for_eval',
    'confusion_summary', 'save_features',
]

_logger = logging.getLogger(__name__)

# what a training checkpoint holds beside the weights (zoo.training.trainer writes them all)
_TRAINING_KEYS = ('config', 'model', 'num_classes', 'classes', 'data_config')


@dataclass
class EvalJob:
    """What to evaluate, on what. Give ``model`` (a zoo name, with ``pretrained`` or a weights ``checkpoint``) or
    a training ``checkpoint``; data from ``data_dir`` (an ImageFolder root holding ``split``), ``digits``, or, for
    a training checkpoint, the data it was trained on."""
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    pretrained: bool = False
    use_ema: bool = False
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_dir: Optional[str] = None
    digits: bool = False
    split: str = 'val'
    image_size: Optional[int] = None
    batch_size: int = 64
    workers: int = 0
    device: str = 'auto'
    amp: Optional[str] = None
    features: Optional[str] = None
    progress: bool = False

    def check(self) -> None:
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f'model_kwargs: expected a mapping, got {self.model_kwargs!r}')
        if self.checkpoint is None and self.model is None:
            raise ConfigError('model: give a model name (with pretrained weights or a weights checkpoint), or a '
                              'training checkpoint')
        for key, low in (('batch_size', 1), ('image_size', 1), ('workers', 0)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f'{key}: must be >= {low}, got {value}')
        if self.data_dir is not None and self.digits:
            raise ConfigError('data_dir: give an image folder or digits, not both')
        if self.features and not self.features.endswith(('.pt', '.npz')):
            raise ConfigError(f'features: {self.features!r} must end in .pt or .npz')
        if self.amp not in (None, 'bfloat16', 'float16'):
            raise ConfigError(f"amp: expected 'bfloat16' or 'float16', got {self.amp!r}")


@dataclass
class EvalResult:
    name: str
    dataset: str  # 'folder' or 'digits'
    split: str
    num_images: int
    input_size: Tuple[int, int, int]
    metrics: Dict[str, Any]
    classes: List[str]
    device: torch.device


def is_training_checkpoint(path: Union[str, Path]) -> bool:
    """Whether `path` was written by :func:`zoo.training.train` (it then names its model and data). Any file the
    hub reads (safetensors under any name, weights pickled with training args or configs) is told apart safely."""
    return _training_state(hub.read_checkpoint(path)) is not None


def _training_state(checkpoint: Any) -> Optional[Dict[str, Any]]:
    if isinstance(checkpoint, dict) and all(k in checkpoint for k in _TRAINING_KEYS) \
            and isinstance(checkpoint['config'], dict):
        return checkpoint
    return None


def load_model_for_eval(
        model_name: Optional[str] = None,
        checkpoint: Optional[Union[str, Path]] = None,
        pretrained: bool = False,
        use_ema: bool = False,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[torch.nn.Module, Optional[Dict[str, Any]]]:
    """The model to evaluate and, for a training checkpoint, that checkpoint (config, classes, data_config).

    `checkpoint` is either a training checkpoint (its config names the model; `use_ema` takes the EMA
    weights) or a weights file for `model_name` in the authors' format or ours, read as
    ``pretrained_cfg_overlay=dict(file=...)`` reads it (the model's checkpoint filter).
    """
    state = _training_state(hub.read_checkpoint(checkpoint)) if checkpoint is not None else None
    if state is not None:
        # only the model section matters here (checkpoints of older schemas stay readable)
        cfg = config_from_dict({'model': state['config']['model']})
        if model_name is not None and model_name != cfg.model.name:
            raise ConfigError(f'model: {model_name!r} given, but training checkpoint {checkpoint} holds a '
                              f'{cfg.model.name!r}; leave the model out to evaluate the checkpoint\'s own')
        model = create_model_from_config(ModelConfig(name=cfg.model.name, kwargs=cfg.model.kwargs),
                                         num_classes=state['num_classes'])
        if use_ema:
            if state.get('ema') is None:
                raise ConfigError(f'use_ema: checkpoint {checkpoint} was trained without EMA (ema.enabled=false)')
            weights = {k.removeprefix('module.'): v for k, v in state['ema'].items()}
        else:
            weights = state['model']
        model.load_state_dict(weights)
        return model.eval(), state
    if model_name is None:
        raise ConfigError('model: needed unless the checkpoint is a training checkpoint (which names its model)')
    if use_ema:
        raise ConfigError('use_ema: only a training checkpoint carries EMA weights')
    kwargs = dict(model_kwargs or {})
    if checkpoint is not None:
        overlay = dict(file=str(checkpoint))
        if 'num_classes' in kwargs:
            # timm drops the classifier of weights whose cfg names another class count
            overlay['num_classes'] = kwargs['num_classes']
        kwargs['pretrained_cfg_overlay'] = overlay
    model = create_model_from_config(
        ModelConfig(name=model_name, pretrained=pretrained or checkpoint is not None), **kwargs)
    return model.eval(), None


def _data_for(job: EvalJob, model: torch.nn.Module, state: Optional[Dict[str, Any]]
              ) -> Tuple[DataConfig, Dict[str, Any]]:
    """The dataset config and timm data config (input size, crop, mean/std) the job evaluates on."""
    if job.data_dir:
        data_cfg = DataConfig(dataset='folder', root=job.data_dir, val_split=job.split)
    elif job.digits:
        data_cfg = DataConfig(dataset='digits')
    elif state is not None:
        data_cfg = DataConfig(**{k: v for k, v in state['config']['data'].items()
                                 if k in ('dataset', 'root', 'val_split', 'digits_val_fraction', 'image_size')})
    else:
        raise ConfigError('data_dir: give an image folder or digits (only a training checkpoint names its data)')
    if state is not None and job.image_size is None:
        data_config = dict(state['data_config'])
    else:
        data_config = model_data_config(model, job.image_size)
    return data_cfg, data_config


def run_evaluation(job: EvalJob) -> EvalResult:
    """Load the model and data the job names, check they fit each other, and evaluate."""
    job.check()
    model, state = load_model_for_eval(job.model, job.checkpoint, job.pretrained, job.use_ema, job.model_kwargs)
    data_cfg, data_config = _data_for(job, model, state)
    dataset = create_dataset(data_cfg, 'val', create_eval_transform(data_config),
                             data_cfg.image_size or DIGITS_IMAGE_SIZE)
    num_classes = model.num_classes
    if max(dataset.targets, default=0) >= num_classes:
        raise ConfigError(f'data_dir: the dataset has {len(dataset.classes)} classes, the model predicts '
                          f'{num_classes}; set model_kwargs num_classes (and give weights trained for them)')
    device = torch.device(resolve_device(job.device))
    amp_dtype = resolve_amp_dtype(job.amp is not None, job.amp or 'bfloat16', device)
    loader = create_loader(dataset, job.batch_size, is_training=False, workers=job.workers)
    if state is None and job.checkpoint is None and not job.pretrained:
        _logger.warning(f'{job.model} has random weights (no pretrained weights and no checkpoint were given): '
                        f'its accuracy is chance level')
    model.to(device)
    metrics = evaluate(model, loader, device, num_classes, amp_dtype, features=bool(job.features),
                       progress=job.progress)
    return EvalResult(
        name=state['arch'] if state is not None else job.model,
        dataset=data_cfg.dataset,
        split=data_cfg.val_split if data_cfg.dataset == 'folder' else 'held-out',
        num_images=len(dataset),
        input_size=tuple(data_config['input_size']),
        metrics=metrics,
        classes=list(state['classes'] if state is not None else dataset.classes),
        device=device,
    )


def confusion_summary(confusion: torch.Tensor, classes: Optional[Sequence[str]] = None, top: int = 5) -> List[str]:
    """Lines: per-class recall (worst classes first, at most `top`) and the most frequent confusions."""
    confusion = confusion.to(torch.int64)
    names = list(classes) if classes is not None else [str(i) for i in range(confusion.shape[0])]
    names += [str(i) for i in range(len(names), confusion.shape[0])]
    support = confusion.sum(1)
    present = (support > 0).nonzero().flatten().tolist()
    recall = {i: confusion[i, i].item() / support[i].item() for i in present}
    worst = sorted(present, key=lambda i: recall[i])[:top]
    lines = ['per-class recall (lowest first): ' + ', '.join(
        f'{names[i]} {100 * recall[i]:.1f}% ({confusion[i, i].item()}/{support[i].item()})' for i in worst)]
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True)
    pairs = [(divmod(f.item(), off.shape[1]), c.item()) for c, f in zip(counts[:top], flat[:top]) if c > 0]
    if pairs:
        lines.append('most confused (true -> predicted): ' + ', '.join(
            f'{names[t]} -> {names[p]}: {c}' for (t, p), c in pairs))
    else:
        lines.append('most confused (true -> predicted): none, every image is classified correctly')
    return lines


def save_features(path: Union[str, Path], features: torch.Tensor, targets: torch.Tensor,
                  classes: Optional[Sequence[str]] = None) -> Path:
    """Pooled features and targets as ``.pt`` (torch.save of tensors) or ``.npz`` (numpy arrays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == '.npz':
        np.savez(path, features=features.numpy(), targets=targets.numpy(), classes=np.array(list(classes or [])))
    elif path.suffix == '.pt':
        torch.save({'features': features, 'targets': targets, 'classes': list(classes or [])}, path)
    else:
        raise ConfigError(f'features: {str(path)!r} must end in .pt or .npz')
    return path
