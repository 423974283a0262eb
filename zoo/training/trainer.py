"""A whole training run from a :class:`TrainConfig`: model, data, optimizer, schedule, loop, checkpoints, logs.

Runs single-process or under torchrun (DDP; nccl on GPUs, gloo on CPUs). Rank 0 writes the outputs in
``cfg.output``: ``last.pth`` each checkpoint epoch and ``best.pth`` (see :mod:`.checkpoint`),
``summary.csv`` (one row per epoch, timm's format) and ``steps.csv`` (loss and lr of every update).
"""
import csv
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import timm
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, random_seed, update_summary
from timm.utils.distributed import init_distributed_device_so
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import load_training_state, rng_state, save_training_state, set_rng_state
from .config import ConfigError, ModelConfig, TrainConfig, config_to_dict
from .data import create_dataset, create_eval_transform, create_loader, create_train_transform, model_data_config
from .engine import evaluate, train_one_epoch

__all__ = ['create_model_from_config', 'resolve_device', 'resolve_amp_dtype', 'train']

_logger = logging.getLogger(__name__)

DIGITS_IMAGE_SIZE = 32  # the digits' stored size when data.image_size is not set; transforms resize anyway


def create_model_from_config(cfg: ModelConfig, num_classes: Optional[int] = None, **kwargs) -> torch.nn.Module:
    """The model `cfg` names, with config errors (unknown name, bad kwargs) raised as :class:`ConfigError`."""
    if not timm.is_model(cfg.name):
        zoo_names = ', '.join(timm.list_models('zoo_*'))
        raise ConfigError(f'model.name: {cfg.name!r} is not a registered model; zoo models: {zoo_names}')
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **cfg.kwargs, **kwargs)
    except TypeError as e:
        raise ConfigError(f'model.kwargs: {cfg.kwargs!r} not accepted by {cfg.name}: {e}') from None
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def resolve_device(name: str) -> str:
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'device: {name!r} asked for, but CUDA is not available; use cpu or auto')
    return name


def resolve_amp_dtype(enabled: bool, dtype: str, device: torch.device) -> Optional[torch.dtype]:
    if not enabled:
        return None
    if dtype == 'float16' and device.type != 'cuda':
        raise ConfigError("amp.dtype: 'float16' needs a CUDA device; use 'bfloat16' on CPUs")
    return getattr(torch, dtype)


def _loss_fn(cfg: TrainConfig, mixup: bool) -> torch.nn.Module:
    if mixup:
        return SoftTargetCrossEntropy()  # Mixup already smooths the targets
    if cfg.aug.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.aug.label_smoothing)
    return torch.nn.CrossEntropyLoss()


def _gather_rng(generator: torch.Generator, distributed: bool) -> List[Dict[str, Any]]:
    state = rng_state(generator)
    if not distributed:
        return [state]
    states: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def _truncate_csv(path: Path, column: str, last: int) -> None:
    """Drop the rows a killed run wrote after its last checkpoint (`column` > `last`); they are redone."""
    if not path.is_file():
        return
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r[column]) <= last)


class _StepLog:
    """steps.csv: the loss and learning rate of every optimizer update."""

    def __init__(self, path: Path, epoch: int, append: bool):
        self.file = open(path, 'a' if append else 'w', newline='')
        self.writer = csv.writer(self.file)
        self.epoch = epoch
        if not append:
            self.writer.writerow(['epoch', 'update', 'loss', 'lr'])

    def __call__(self, num_updates: int, loss: float, lr: float) -> None:
        self.writer.writerow([self.epoch, num_updates, repr(loss), repr(lr)])

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def train(
        cfg: TrainConfig,
        resume: Optional[Union[str, Path]] = None,
        stop_after_epoch: Optional[int] = None,
) -> Dict[str, Any]:
    """Train as `cfg` says; returns the last epoch's metrics and the best top-1.

    `resume` continues from a checkpoint of the same config, exactly: the resumed run's updates are those
    the uninterrupted run would have made. `stop_after_epoch` ends this run after that epoch (e.g. for a
    time-sliced job) with a checkpoint to resume from.
    """
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ConfigError(f'stop_after_epoch: must be >= 1, got {stop_after_epoch}')
    dist_info = init_distributed_device_so(resolve_device(cfg.device))
    device = torch.device(dist_info['device'])
    distributed, rank = dist_info['distributed'], dist_info['global_rank']
    is_main = rank == 0
    random_seed(cfg.seed, rank)
    output = Path(cfg.output)
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        if not resume:
            (output / 'summary.csv').unlink(missing_ok=True)  # update_summary appends

    digits_size = cfg.data.image_size or DIGITS_IMAGE_SIZE
    train_set = create_dataset(cfg.data, 'train', None, digits_size)
    val_set = create_dataset(cfg.data, 'val', None, digits_size)
    num_classes = len(train_set.classes)

    model = create_model_from_config(cfg.model, num_classes=num_classes)
    data_config = model_data_config(model, cfg.data.image_size)
    train_set.transform = create_train_transform(data_config, cfg.aug)
    val_set.transform = create_eval_transform(data_config)
    model.to(device)
    if is_main:
        params = sum(p.numel() for p in model.parameters())
        _logger.info(f'{cfg.model.name}: {params / 1e6:.2f}M parameters, {num_classes} classes, '
                     f'{len(train_set)} train / {len(val_set)} val images, input {data_config["input_size"]}')

    train_loader = create_loader(
        train_set, cfg.data.batch_size, is_training=True, seed=cfg.seed, distributed=distributed,
        workers=cfg.data.workers, pin_memory=cfg.data.pin_memory)
    val_loader = create_loader(
        val_set, cfg.data.val_batch_size or cfg.data.batch_size, is_training=False, distributed=distributed,
        workers=cfg.data.workers, pin_memory=cfg.data.pin_memory)
    if len(train_loader) == 0:
        raise ConfigError(
            f'data.batch_size: {cfg.data.batch_size} is larger than the {len(train_set)} training images per process')

    if cfg.optim.name.lower() not in list_optimizers():
        raise ConfigError(f'optim.name: {cfg.optim.name!r} is not an optimizer timm knows; e.g. adamw, sgd, lamb, lion')
    optimizer = create_optimizer_v2(
        model, opt=cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum)
    updates_per_epoch = math.ceil(len(train_loader) / cfg.optim.accum_steps)
    scheduler = None
    if cfg.sched.name != 'none':
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched.name, num_epochs=cfg.epochs, decay_epochs=cfg.sched.decay_epochs,
            decay_milestones=cfg.sched.decay_milestones, decay_rate=cfg.sched.decay_rate, min_lr=cfg.sched.min_lr,
            warmup_lr=cfg.sched.warmup_lr, warmup_epochs=cfg.sched.warmup_epochs,
            step_on_epochs=cfg.sched.step_on_epochs, updates_per_epoch=updates_per_epoch)
    amp_dtype = resolve_amp_dtype(cfg.amp.enabled, cfg.amp.dtype, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    model_ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None

    mixup_fn = None
    if cfg.aug.mixup > 0 or cfg.aug.cutmix > 0:
        mixup_fn = Mixup(
            mixup_alpha=cfg.aug.mixup, cutmix_alpha=cfg.aug.cutmix, prob=cfg.aug.mixup_prob,
            switch_prob=cfg.aug.mixup_switch_prob, label_smoothing=cfg.aug.label_smoothing, num_classes=num_classes)
    loss_fn = _loss_fn(cfg, mixup_fn is not None)

    start_epoch, num_updates, best_top1 = 0, 0, -1.
    if resume:
        checkpoint = load_training_state(resume)
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        if scheduler is not None and checkpoint.get('scheduler') is not None:
            scheduler.load_state_dict(checkpoint['scheduler'])
        if scaler is not None and checkpoint.get('scaler') is not None:
            scaler.load_state_dict(checkpoint['scaler'])
        if model_ema is not None and checkpoint.get('ema') is not None:
            model_ema.load_state_dict(checkpoint['ema'])
        start_epoch, num_updates = checkpoint['epoch'] + 1, checkpoint['num_updates']
        best_top1 = checkpoint.get('best_top1', best_top1)
        if is_main:
            _truncate_csv(output / 'steps.csv', 'update', num_updates)
            _truncate_csv(output / 'summary.csv', 'epoch', checkpoint['epoch'])
        states = checkpoint['rng']
        set_rng_state(states[rank] if rank < len(states) else states[0], train_loader.generator)
        if is_main:
            _logger.info(f'Resumed from {resume} at epoch {start_epoch}')

    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)

    wandb_run = _init_wandb(cfg) if cfg.log.wandb and is_main else None
    step_log = _StepLog(output / 'steps.csv', start_epoch, append=resume is not None) if is_main else None
    metrics: Dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if distributed:
                train_loader.sampler.set_epoch(epoch)
            if step_log is not None:
                step_log.epoch = epoch
            train_metrics = train_one_epoch(
                model, train_loader, optimizer, loss_fn, device, epoch, num_updates, scheduler=scheduler,
                amp_dtype=amp_dtype, scaler=scaler, accum_steps=cfg.optim.accum_steps, clip_grad=cfg.optim.clip_grad,
                clip_mode=cfg.optim.clip_mode, mixup_fn=mixup_fn, model_ema=model_ema, on_update=step_log,
                progress=cfg.log.progress and is_main)
            num_updates = train_metrics.pop('num_updates')
            if scheduler is not None:
                scheduler.step(epoch + 1)
            eval_metrics = _eval_metrics(evaluate(
                model, val_loader, device, num_classes, amp_dtype, distributed=distributed,
                progress=cfg.log.progress and is_main))
            if model_ema is not None and cfg.ema.eval:
                ema_metrics = evaluate(model_ema.module, val_loader, device, num_classes, amp_dtype,
                                       distributed=distributed)
                eval_metrics.update({f'ema_{k}': v for k, v in _eval_metrics(ema_metrics).items()})
            improved = eval_metrics['top1'] > best_top1
            best_top1 = max(best_top1, eval_metrics['top1'])
            metrics = {'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()},
                       **{f'eval_{k}': v for k, v in eval_metrics.items()}, 'best_top1': best_top1}

            stopping = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch
            save = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs or stopping
            rng = _gather_rng(train_loader.generator, distributed) if save else None
            if is_main:
                _logger.info(
                    f'epoch {epoch}: train loss {train_metrics["loss"]:.4f}, lr {train_metrics["lr"]:.2e} | '
                    + ', '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
                update_summary(epoch, train_metrics, eval_metrics, output / 'summary.csv',
                               write_header=epoch == 0)
                if wandb_run is not None:
                    wandb_run.log(metrics, step=epoch)
                if save:
                    step_log.flush()  # every row up to the checkpoint is on disk before it is
                    state = {
                        'epoch': epoch, 'num_updates': num_updates, 'arch': cfg.model.name,
                        'num_classes': num_classes, 'classes': list(train_set.classes),
                        'data_config': data_config, 'config': config_to_dict(cfg),
                        'model': _unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
                        'scheduler': scheduler.state_dict() if scheduler is not None else None,
                        'scaler': scaler.state_dict() if scaler is not None else None,
                        'ema': model_ema.state_dict() if model_ema is not None else None,
                        'rng': rng, 'metrics': eval_metrics, 'best_top1': best_top1,
                    }
                    save_training_state(state, output / 'last.pth')
                    if improved:
                        save_training_state(state, output / 'best.pth')
            if stopping:
                break
    finally:
        if step_log is not None:
            step_log.close()
        if wandb_run is not None:
            wandb_run.finish()
        if distributed:
            dist.destroy_process_group()
    return metrics


def _eval_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: metrics[k] for k in ('loss', 'top1', 'top5')}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _init_wandb(cfg: TrainConfig):
    try:
        import wandb
    except ImportError:
        raise ConfigError('log.wandb: wandb is not installed; pip install wandb, or set log.wandb=false') from None
    # mode None lets wandb read WANDB_MODE (online, offline, disabled) from the environment
    return wandb.init(project=cfg.log.wandb_project, config=config_to_dict(cfg), dir=cfg.output,
                      mode=cfg.log.wandb_mode)
