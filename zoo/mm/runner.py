"""Training and testing mmdet/mmseg configs with mmengine's Runner (behind tools/train.py, tools/test.py).

Kept thin: load the config, apply overrides, pick the launcher from the environment torchrun sets, adapt a
CPU-only machine (gloo, no SyncBN, DDP without device ids), then hand over to ``Runner``.
"""
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction

from .checkpoint import allow_mmengine_checkpoints

__all__ = ['ConfigError', 'is_mm_config', 'load_mm_config', 'build_runner', 'train', 'test', 'last_metrics', 'summary']

_logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config (or an override) that cannot be used; the message says what and what is allowed."""


def is_mm_config(path: Union[str, Path]) -> bool:
    """mmdet/mmseg configs are Python files; the zoo's classification configs are YAML."""
    return str(path).endswith('.py')


def parse_options(options: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` overrides in mmengine's ``--cfg-options`` syntax (``model.backbone.frozen_stages=1``,
    ``train_dataloader.batch_size=4``, lists as ``a=[1,2]``)."""
    parsed: Dict[str, Any] = {}
    for option in options:
        if '=' not in option:
            raise ConfigError(f'override {option!r} is not KEY=VALUE')
        key, value = option.split('=', 1)
        parsed[key] = DictAction._parse_iterable(value)
    return parsed


def load_mm_config(path: Union[str, Path], options: Sequence[str] = (), work_dir: Optional[str] = None) -> Config:
    if not Path(path).is_file():
        raise ConfigError(f'config {path} does not exist')
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(parse_options(options))
    cfg.work_dir = work_dir or cfg.get('work_dir') or str(Path('output') / Path(path).stem)
    return cfg


def _replace_sync_bn(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, list):
        for value in node:
            _replace_sync_bn(value)
    return node


def _setup_launcher(cfg: Config) -> str:
    """'pytorch' under torchrun (WORLD_SIZE > 1), else 'none'. Without CUDA: gloo, BN for SyncBN (and no
    ``sync_bn`` conversion), DDP on CPU."""
    distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
    if not torch.cuda.is_available():
        if distributed and not dist.is_initialized():
            # mmengine's own init calls torch.cuda.set_device, which fails on a machine without GPUs
            dist.init_process_group('gloo')
        _replace_sync_bn(cfg.model)
        cfg.pop('sync_bn', None)  # mmengine's whole-model SyncBatchNorm conversion (the authors' on GPUs) needs CUDA
        if distributed:
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
    cfg.launcher = 'pytorch' if distributed else 'none'
    return cfg.launcher


def _clean(error: BaseException) -> str:
    """One line: mmengine wraps a constructor's error in "class `X` in <file>: " once per nesting level."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return ' '.join(re.sub(r'class `[^`]+` in \S+?: ', '', str(message)).split())


def build_runner(config: Union[str, Path], options: Sequence[str] = (), work_dir: Optional[str] = None,
                 resume: Optional[str] = None, load_from: Optional[str] = None):
    """An mmengine ``Runner`` for an mmdet/mmseg config, its model built. ``resume``: a checkpoint, or 'auto' (the
    latest in work_dir); ``load_from``: weights to test or fine-tune from. A config or model that cannot be built
    raises :class:`ConfigError` with one line saying why."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    allow_mmengine_checkpoints()
    try:
        cfg = load_mm_config(config, options, work_dir)
        for flag, path in (('--resume', resume if resume != 'auto' else None), ('checkpoint', load_from)):
            if path and not Path(path).is_file():
                raise ConfigError(f'{flag}: {path} does not exist')
        if resume:
            cfg.resume, cfg.load_from = True, None if resume == 'auto' else resume
        elif load_from:
            cfg.load_from = load_from
        _setup_launcher(cfg)
        return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, ImportError, OSError, SyntaxError) as e:
        raise ConfigError(_clean(e)) from e


def train(config: Union[str, Path], options: Sequence[str] = (), work_dir: Optional[str] = None,
          resume: Optional[str] = None) -> Dict[str, float]:
    """Train (validating as the config says); returns the last validation metrics (empty when it did not
    validate)."""
    runner = build_runner(config, options, work_dir, resume=resume)
    runner.train()
    return last_metrics(runner)


def test(config: Union[str, Path], checkpoint: str, options: Sequence[str] = (),
         work_dir: Optional[str] = None) -> Dict[str, float]:
    """Evaluate ``checkpoint`` on the config's test set; returns the metrics."""
    runner = build_runner(config, options, work_dir, load_from=checkpoint)
    return dict(runner.test())


def last_metrics(runner) -> Dict[str, float]:
    scalars = runner.message_hub.log_scalars
    return {key[len('val/'):]: buffer.current() for key, buffer in scalars.items() if key.startswith('val/')}


def summary(metrics: Dict[str, Any], keys: List[str] = ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU', 'aAcc')) -> str:
    shown = {k: metrics[k] for k in keys if k in metrics} or metrics
    return ', '.join(f'{k} {float(v):.4g}' for k, v in shown.items())
