"""Datasets, transforms and loaders for training and evaluation.

Two sources: an ImageFolder tree (``<root>/<split>/<class>/*.jpg``) and scikit-learn's handwritten digits
(1797 8x8 grey images, 10 classes) upscaled to RGB images, with a stratified held-out split fixed by
:data:`DIGITS_SPLIT_SEED` so every tool sees the same held-out images. Transforms are timm's, from the
model's pretrained cfg.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler
from torchvision.datasets import ImageFolder

from .config import AugConfig, ConfigError, DataConfig

__all__ = [
    'DIGITS_SPLIT_SEED', 'DigitsDataset', 'ShardSampler', 'model_data_config', 'create_dataset',
    'create_train_transform', 'create_eval_transform', 'create_loader',
]

DIGITS_SPLIT_SEED = 0


class DigitsDataset(Dataset):
    """scikit-learn's digits as RGB PIL images of `image_size` pixels; `split` is 'train' or 'val'."""

    def __init__(
            self,
            split: str = 'train',
            image_size: int = 32,
            val_fraction: float = 0.25,
            transform: Optional[Callable] = None,
    ):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ('train', 'val'):
            raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        index = np.arange(len(digits.target))
        train_index, val_index = train_test_split(
            index, test_size=val_fraction, stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
        self.indices = train_index if split == 'train' else val_index
        pixels = (digits.images[self.indices] * (255. / 16.)).round().astype(np.uint8)
        self.images = [
            Image.fromarray(p, mode='L').resize((image_size, image_size), Image.BICUBIC).convert('RGB') for p in pixels]
        self.targets: List[int] = digits.target[self.indices].tolist()
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Tuple[Any, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform is not None else image), self.targets[i]


def model_data_config(model: torch.nn.Module, image_size: Optional[int] = None) -> Dict[str, Any]:
    """timm's data config (input size, interpolation, crop, mean/std) from the model's pretrained cfg."""
    data_config = resolve_data_config({}, model=model)
    if image_size is not None:
        data_config['input_size'] = (data_config['input_size'][0], image_size, image_size)
    return data_config


def create_train_transform(data_config: Dict[str, Any], aug: AugConfig) -> Callable:
    return create_transform(
        **data_config, is_training=True, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
        color_jitter=aug.color_jitter, auto_augment=aug.auto_augment, re_prob=aug.re_prob)


def create_eval_transform(data_config: Dict[str, Any]) -> Callable:
    return create_transform(**data_config, is_training=False)


def create_dataset(cfg: DataConfig, split: str, transform: Optional[Callable], image_size: int) -> Dataset:
    """The `split` ('train' or 'val') of the dataset `cfg` names."""
    if cfg.dataset == 'digits':
        return DigitsDataset(split, image_size=image_size, val_fraction=cfg.digits_val_fraction, transform=transform)
    folder_name = cfg.train_split if split == 'train' else cfg.val_split
    folder = Path(cfg.root) / folder_name
    if not folder.is_dir():
        key = 'data.train_split' if split == 'train' else 'data.val_split'
        raise ConfigError(
            f'data.root: {cfg.root!r} has no folder {folder_name!r} ({key}); expected an ImageFolder tree '
            f'<root>/<split>/<class>/<image>')
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f'data.root: {folder} holds no usable ImageFolder tree ({e})') from None


class ShardSampler(Sampler):
    """Evaluation under DDP: process `rank` of `world_size` reads images rank, rank + world_size, ... in order, with
    no padding (``DistributedSampler`` repeats images to even the shards out, so they would be counted twice). The
    shards may differ in length by one; summed over the processes, every image counts exactly once."""

    def __init__(self, dataset: Dataset, rank: Optional[int] = None, world_size: Optional[int] = None):
        import torch.distributed as dist
        self.num_images = len(dataset)
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size

    def __iter__(self):
        return iter(range(self.rank, self.num_images, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_images, self.world_size))


def create_loader(
        dataset: Dataset,
        batch_size: int,
        is_training: bool,
        seed: int = 0,
        distributed: bool = False,
        workers: int = 0,
        pin_memory: bool = False,
) -> DataLoader:
    """A loader whose shuffling (and worker seeds) come from its own generator, `loader.generator`.

    Saving ``loader.generator.get_state()`` with a checkpoint and restoring it on resume replays the same
    order; distributed samplers shuffle by seed and epoch (``loader.sampler.set_epoch``). A distributed
    evaluation loader gives each process its shard of the images, each image exactly once (:class:`ShardSampler`).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if distributed and is_training:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)
    elif distributed:
        sampler = ShardSampler(dataset)
    elif is_training:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=is_training, generator=generator, persistent_workers=False)
