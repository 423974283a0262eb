"""Model loading and reporting for evaluation: a zoo name (+ pretrained weights) or a training checkpoint."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import ConfigError, ModelConfig, config_from_dict
from .trainer import create_model

__all__ = ['is_training_checkpoint', 'load_model', 'confusion_summary', 'save_features']


def is_training_checkpoint(path: Union[str, Path]) -> bool:
    """Whether `path` was written by :func:`zoo.training.train` (it then names its model and data)."""
    if Path(path).suffix == '.safetensors':
        return False
    checkpoint = load_checkpoint(path)
    return isinstance(checkpoint, dict) and 'config' in checkpoint and 'model' in checkpoint


def load_model(
        model_name: Optional[str] = None,
        checkpoint: Optional[Union[str, Path]] = None,
        pretrained: bool = False,
        use_ema: bool = False,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[torch.nn.Module, Optional[Dict[str, Any]]]:
    """The model to evaluate and, for a training checkpoint, that checkpoint (config, classes, data_config).

    `checkpoint` is either a training checkpoint (its config names the model; `use_ema` takes the EMA
    weights) or a weights file for `model_name` in the authors' format or ours, read through the model's
    checkpoint filter (``pretrained_cfg_overlay=dict(file=...)``).
    """
    if checkpoint is not None and is_training_checkpoint(checkpoint):
        state = load_checkpoint(checkpoint)
        # only the model section matters here (checkpoints of older schemas stay readable)
        cfg = config_from_dict({'model': state['config']['model']})
        model_cfg = ModelConfig(name=cfg.model.name, kwargs=cfg.model.kwargs)
        model = create_model(model_cfg, num_classes=state['num_classes'])
        if use_ema:
            if state.get('ema') is None:
                raise ConfigError(f'--use-ema: checkpoint {checkpoint} was trained without EMA (ema.enabled=false)')
            weights = {k.removeprefix('module.'): v for k, v in state['ema'].items()}
        else:
            weights = state['model']
        model.load_state_dict(weights)
        return model.eval(), state
    if model_name is None:
        raise ConfigError('--model: needed unless --checkpoint is a training checkpoint (which names its model)')
    kwargs = dict(model_kwargs or {})
    if checkpoint is not None:
        overlay = dict(file=str(checkpoint))
        if 'num_classes' in kwargs:
            # timm drops the classifier of weights whose cfg names another class count
            overlay['num_classes'] = kwargs['num_classes']
        kwargs['pretrained_cfg_overlay'] = overlay
    model = create_model(ModelConfig(name=model_name, pretrained=pretrained or checkpoint is not None), **kwargs)
    return model.eval(), None


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
        raise ConfigError(f'--features: {str(path)!r} must end in .pt or .npz')
    return path

