"""A whole training run from a :class:`TrainConfig`: model, data, optimizer, schedule, loop, checkpoints, logs.

Runs single-process or under torchrun (DDP; nccl on GPUs, gloo on CPUs). Rank 0 writes the outputs in
``cfg.output``: ``last.pth`` each checkpoint epoch and ``best.pth`` (see :mod:`.checkpoint`),
``summary.csv`` (one row per epoch, timm's format) and ``steps.csv`` (loss and lr of every update); losses are
averaged over the processes. Under DDP, BatchNorm statistics are made the same on every process before each
evaluation (``dist_bn``) and every validation image is counted exactly once, so the figures are those of a
single process.

``last.pth`` records which epoch ``best.pth`` holds (``best_epoch``); it is written first, so a run killed
between the two writes leaves a ``best.pth`` one improvement behind, which a resume rewrites from ``last.pth``.
A resume also removes the temporary files of killed writes, copies the CSV history into a new output folder,
refuses a checkpoint of another model in one line, and rebuilds the lr schedule (saying so) when ``epochs`` or
``sched`` changed.
"""
import csv
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

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

from .checkpoint import (
    checkpoint_epoch,
    load_training_state,
    remove_unfinished_writes,
    rng_state,
    save_training_state,
    set_rng_state,
)
from .config import ConfigError, ModelConfig, TrainConfig, config_to_dict
from .data import create_dataset, create_eval_transform, create_loader, create_train_transform, model_data_config
from .engine import evaluate, sync_batchnorm_stats, train_one_epoch

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


def _has_rows(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _describe(items: List[str], limit: int = 3) -> str:
    return ', '.join(items[:limit]) + (f' and {len(items) - limit} more' if len(items) > limit else '')


def _state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """'' when `found` fits `expected` key for key and shape for shape, else a short summary of what differs."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f'{k} {list(found[k].shape)} (model: {list(v.shape)})'
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    parts = [f'{len(items)} {what}: {_describe(items)}' for items, what in (
        (missing, 'keys missing'), (unexpected, 'unexpected keys'), (shapes, 'keys of another shape')) if items]
    return '; '.join(parts)


def _check_resumable(cfg: TrainConfig, checkpoint: Dict[str, Any], resume: Union[str, Path]) -> None:
    """One clear line for a checkpoint this config cannot continue (instead of torch's key-by-key traceback)."""
    trained = checkpoint.get('config') or {}
    arch = checkpoint.get('arch') or trained.get('model', {}).get('name')
    if arch != cfg.model.name:
        raise ConfigError(f'model.name: {cfg.model.name!r}, but checkpoint {resume} was trained with {arch!r}; resume '
                          f'with model.name={arch}, or start a new run without --resume')
    optim = trained.get('optim', {}).get('name')
    if optim is not None and optim.lower() != cfg.optim.name.lower():
        raise ConfigError(f'optim.name: {cfg.optim.name!r}, but checkpoint {resume} was trained with {optim!r}, whose '
                          f'state cannot continue under another optimizer; resume with optim.name={optim}')
    if checkpoint['epoch'] + 1 >= cfg.epochs:
        done = checkpoint['epoch']
        raise ConfigError(f'epochs: {cfg.epochs}, but checkpoint {resume} has finished epoch {done} (epochs count '
                          f'from 0): nothing is left to train; set epochs above {done + 1}')


def _schedule_changes(cfg: TrainConfig, checkpoint: Dict[str, Any]) -> List[str]:
    """The schedule settings (epochs, sched.*) that differ from those the checkpoint's run had."""
    trained = checkpoint.get('config') or {}
    now = config_to_dict(cfg)
    changes = []
    if trained.get('epochs') != cfg.epochs:
        changes.append(f'epochs {trained.get("epochs")} -> {cfg.epochs}')
    before = trained.get('sched') or {}
    changes += [f'sched.{k} {before.get(k)!r} -> {v!r}' for k, v in now['sched'].items() if before.get(k) != v]
    return changes


def _best_epoch(checkpoint: Dict[str, Any]) -> Optional[int]:
    if 'best_epoch' in checkpoint:
        return checkpoint['best_epoch']
    # a checkpoint from before best_epoch was recorded: known when it is itself the best
    if (checkpoint.get('metrics') or {}).get('top1') == checkpoint.get('best_top1'):
        return checkpoint['epoch']
    return None


def _repair_best(output: Path, checkpoint: Dict[str, Any], resume: Union[str, Path]) -> None:
    """Make best.pth hold the epoch that the resumed checkpoint says is the best (``best_epoch``)."""
    best_epoch = _best_epoch(checkpoint)
    best = output / 'best.pth'
    held = checkpoint_epoch(best)
    if best_epoch is None or held == best_epoch:
        return
    was = f'epoch {held}' if held is not None else 'nothing'
    if best_epoch == checkpoint['epoch']:
        save_training_state(checkpoint, best)  # the very state a killed run was about to write there
        _logger.warning(f'best.pth held {was}, but the best top-1 ({checkpoint["best_top1"]:.4f}) is epoch '
                        f'{best_epoch}, which {resume} holds (a run stopped between writing last.pth and best.pth): '
                        f'rewrote best.pth from it')
        return
    elsewhere = Path(resume).parent / 'best.pth'
    if elsewhere.resolve() != best.resolve() and checkpoint_epoch(elsewhere) == best_epoch:
        save_training_state(load_training_state(elsewhere), best)
        _logger.info(f'best.pth (epoch {best_epoch}) copied from {elsewhere}')
        return
    _logger.warning(f'best.pth holds {was}, but the best top-1 ({checkpoint["best_top1"]:.4f}) was epoch '
                    f'{best_epoch}, whose weights are not at hand; best.pth is replaced at the next improvement')


class _StepLog:
    """steps.csv: the loss and learning rate of every optimizer update."""

    def __init__(self, path: Path, epoch: int, append: bool):
        header = not append or not _has_rows(path)
        self.file = open(path, 'a' if append else 'w', newline='')
        self.writer = csv.writer(self.file)
        self.epoch = epoch
        if header:
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
    checkpoint = load_training_state(resume) if resume else None
    if checkpoint is not None:
        _check_resumable(cfg, checkpoint, resume)
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        removed = remove_unfinished_writes(output)
        if removed:
            _logger.info(f'Removed what killed writes left in {output}: {", ".join(p.name for p in removed)}')
        if checkpoint is None:
            (output / 'summary.csv').unlink(missing_ok=True)  # update_summary appends
        elif Path(resume).parent.resolve() != output.resolve():
            for name in ('summary.csv', 'steps.csv'):  # a new output folder continues the run's history
                source = Path(resume).parent / name
                if source.is_file() and not (output / name).exists():
                    shutil.copyfile(source, output / name)

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

    start_epoch, num_updates, best_top1, best_epoch = 0, 0, -1., None
    if checkpoint is not None:
        mismatch = _state_dict_mismatch(model.state_dict(), checkpoint['model'])
        if mismatch:
            trained_kwargs = (checkpoint.get('config') or {}).get('model', {}).get('kwargs')
            raise ConfigError(f'model.kwargs: {cfg.model.kwargs!r}, but checkpoint {resume} holds a {cfg.model.name} '
                              f'built with {trained_kwargs!r} for {checkpoint.get("num_classes")} classes, whose '
                              f'weights do not fit ({mismatch})')
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        start_epoch, num_updates = checkpoint['epoch'] + 1, checkpoint['num_updates']
        if scheduler is not None:
            changes = _schedule_changes(cfg, checkpoint)
            if checkpoint.get('scheduler') is not None and not changes:
                scheduler.load_state_dict(checkpoint['scheduler'])
            else:
                # the schedule for the new settings, at the point the run has reached
                lr_before = optimizer.param_groups[0]['lr']
                scheduler.step(start_epoch)
                scheduler.step_update(num_updates)
                if is_main:
                    _logger.warning(
                        f'Resuming with another schedule ({", ".join(changes) or "none saved"}): the {cfg.sched.name} '
                        f'schedule is rebuilt for {cfg.epochs} epochs and continues at epoch {start_epoch} with lr '
                        f'{optimizer.param_groups[0]["lr"]:.3e} (the checkpoint\'s schedule had {lr_before:.3e})')
        if scaler is not None and checkpoint.get('scaler') is not None:
            scaler.load_state_dict(checkpoint['scaler'])
        if model_ema is not None and checkpoint.get('ema') is not None:
            model_ema.load_state_dict(checkpoint['ema'])
        best_top1 = checkpoint.get('best_top1', best_top1)
        best_epoch = _best_epoch(checkpoint)
        if is_main:
            _truncate_csv(output / 'steps.csv', 'update', num_updates)
            _truncate_csv(output / 'summary.csv', 'epoch', checkpoint['epoch'])
            _repair_best(output, checkpoint, resume)
        states = checkpoint['rng']
        set_rng_state(states[rank] if rank < len(states) else states[0], train_loader.generator)
        if is_main:
            _logger.info(f'Resumed from {resume} at epoch {start_epoch}')
        del checkpoint

    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)

    wandb_run = _init_wandb(cfg) if cfg.log.wandb and is_main else None
    step_log = _StepLog(output / 'steps.csv', start_epoch, append=bool(resume)) if is_main else None
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
                progress=cfg.log.progress and is_main, distributed=distributed)
            num_updates = train_metrics.pop('num_updates')
            if scheduler is not None:
                scheduler.step(epoch + 1)
            if distributed:
                sync_batchnorm_stats(model, cfg.dist_bn)
            eval_metrics = _eval_metrics(evaluate(
                model, val_loader, device, num_classes, amp_dtype, distributed=distributed,
                progress=cfg.log.progress and is_main))
            if model_ema is not None and cfg.ema.eval:
                if distributed:
                    sync_batchnorm_stats(model_ema.module, cfg.dist_bn)
                ema_metrics = evaluate(model_ema.module, val_loader, device, num_classes, amp_dtype,
                                       distributed=distributed)
                eval_metrics.update({f'ema_{k}': v for k, v in _eval_metrics(ema_metrics).items()})
            improved = eval_metrics['top1'] > best_top1
            if improved:
                best_top1, best_epoch = eval_metrics['top1'], epoch
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
                               write_header=not _has_rows(output / 'summary.csv'))
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
                        'rng': rng, 'metrics': eval_metrics, 'best_top1': best_top1, 'best_epoch': best_epoch,
                    }
                    # last.pth first: it says which epoch best.pth holds, and a resume repairs best.pth from it
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
