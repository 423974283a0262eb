"""One training epoch and one evaluation pass; the loops know nothing about configs or files."""
import time
from contextlib import nullcontext
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.utils import accuracy, dispatch_clip_grad, distribute_bn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

__all__ = ['autocast', 'train_one_epoch', 'evaluate', 'sync_batchnorm_stats']


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """A mixed-precision context for `device`, or a no-op context when `dtype` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_one_epoch(
        model: torch.nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        device: torch.device,
        epoch: int,
        num_updates: int,
        scheduler=None,
        amp_dtype: Optional[torch.dtype] = None,
        scaler: Optional[torch.amp.GradScaler] = None,
        accum_steps: int = 1,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        mixup_fn: Optional[Callable] = None,
        model_ema=None,
        on_update: Optional[Callable[[int, float, float], None]] = None,
        progress: bool = False,
        distributed: bool = False,
) -> Dict[str, float]:
    """Train for one pass over `loader`; returns the mean loss, the last lr and the update count reached.

    Gradients of `accum_steps` batches are summed before each optimizer update (a last, shorter group
    is scaled by its own size). `on_update(num_updates, loss, lr)` is called after every update with the
    mean loss of that update's batches. With `distributed`, every process takes part and both losses (each
    update's and the epoch's) are averaged over the processes, so that rank 0 reports the run's loss.
    """
    model.train()
    loss_sum, num_images = 0., 0
    num_batches = len(loader)
    last_group_start = num_batches - (num_batches % accum_steps or accum_steps)
    update_loss = 0.
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=f'train {epoch}', leave=False, disable=not progress, dynamic_ncols=True)
    for i, (images, targets) in enumerate(bar):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        group_size = accum_steps if i < last_group_start else num_batches - last_group_start
        is_update = (i + 1) % accum_steps == 0 or i + 1 == num_batches
        # DDP all-reduces gradients on every backward unless told not to; only the update's backward syncs
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not is_update else nullcontext()
        with sync:
            with autocast(device, amp_dtype):
                loss = loss_fn(model(images), targets)
            scaled = loss / group_size
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        update_loss += loss.item() / group_size
        loss_sum += loss.item() * images.size(0)
        num_images += images.size(0)
        if not is_update:
            continue

        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_grad is not None:
            dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        lr = optimizer.param_groups[0]['lr']
        if distributed:
            update_loss = _mean_over_processes(update_loss, device)
        if on_update is not None:
            on_update(num_updates, update_loss, lr)
        if scheduler is not None:
            scheduler.step_update(num_updates=num_updates)
        bar.set_postfix(loss=f'{update_loss:.4f}', lr=f'{lr:.2e}', refresh=False)
        update_loss = 0.
    if distributed:
        totals = torch.tensor([loss_sum, num_images], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        loss_sum, num_images = totals.tolist()
    mean_loss = loss_sum / num_images if num_images else 0.
    return {'loss': mean_loss, 'lr': optimizer.param_groups[0]['lr'], 'num_updates': num_updates}


def _mean_over_processes(value: float, device: torch.device) -> float:
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def sync_batchnorm_stats(model: torch.nn.Module, mode: str) -> None:
    """Make every process's BatchNorm running statistics the same before evaluating (timm's ``--dist-bn``):
    'reduce' averages them over the processes, 'broadcast' copies rank 0's, 'none' leaves each its own."""
    if mode not in ('reduce', 'broadcast', 'none'):
        raise ValueError(f"dist_bn: expected 'reduce', 'broadcast' or 'none', got {mode!r}")
    if mode != 'none':
        distribute_bn(model, dist.get_world_size(), reduce=mode == 'reduce')


@torch.no_grad()
def evaluate(
        model: torch.nn.Module,
        loader,
        device: torch.device,
        num_classes: int,
        amp_dtype: Optional[torch.dtype] = None,
        features: bool = False,
        distributed: bool = False,
        progress: bool = False,
) -> Dict[str, object]:
    """Top-1/top-5 accuracy (in %), mean cross-entropy, a confusion matrix (rows: target) and throughput.

    With `features`, also the pooled pre-logits features (``forward_head(pre_logits=True)``) and targets.
    With `distributed`, each process evaluates its shard of the images (a loader that counts each image once, e.g.
    :class:`~zoo.training.data.ShardSampler`) and the sums are reduced over the processes; the forward passes
    bypass DDP (no collective per batch, so shards may differ in length). Make the BatchNorm statistics the same
    everywhere first (:func:`sync_batchnorm_stats`).
    """
    model.eval()
    net = model.module if isinstance(model, DistributedDataParallel) else model
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    feats, targets_all = [], []
    maxk = min(5, num_classes)
    compute_time = 0.
    for images, targets in tqdm(loader, desc='eval', leave=False, disable=not progress, dynamic_ncols=True):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(device, amp_dtype):
            if features:
                x = net.forward_features(images)
                pooled = net.forward_head(x, pre_logits=True)
                logits = net.forward_head(x)
                feats.append(pooled.float().cpu())
                targets_all.append(targets.cpu())
            else:
                logits = net(images)
        logits = logits.float()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        compute_time += time.perf_counter() - start
        loss_sum += F.cross_entropy(logits, targets, reduction='sum')
        top1, top5 = accuracy(logits, targets, topk=(1, maxk))
        correct += torch.stack([top1, top5]).to(correct) * targets.size(0) / 100.
        count += targets.size(0)
        confusion += torch.bincount(
            targets * num_classes + logits.argmax(-1), minlength=num_classes ** 2).view(num_classes, num_classes)
    if distributed:
        for t in (loss_sum, correct, count, confusion):
            dist.all_reduce(t)
    n = max(count.item(), 1.)
    metrics: Dict[str, object] = {
        'loss': loss_sum.item() / n,
        'top1': 100. * correct[0].item() / n,
        'top5': 100. * correct[1].item() / n,
        'count': int(count.item()),
        'confusion': confusion.cpu(),
        'images_per_sec': count.item() / compute_time if compute_time > 0 else 0.,
    }
    if features:
        metrics['features'] = torch.cat(feats) if feats else torch.empty(0)
        metrics['targets'] = torch.cat(targets_all) if targets_all else torch.empty(0, dtype=torch.int64)
    return metrics
