#!/usr/bin/env python3
"""Evaluate a zoo model: top-1/top-5, loss, a confusion summary and throughput; optionally dump features.

Examples::

    python tools/eval.py --checkpoint output/demo_digits/last.pth             # the run's own held-out split
    python tools/eval.py --model zoo_van_b0 --pretrained --data-dir /data/imagenet --split val
    python tools/eval.py --model zoo_van_b0 --checkpoint van_tiny_754.pth.tar --data-dir /data/imagenet
    python tools/eval.py --checkpoint output/demo_digits/last.pth --features feats.npz

The logic lives in :mod:`zoo.training`; this script parses, calls it and reports.
"""
import argparse
import sys
from typing import List, Optional

import torch
import yaml

from zoo.training import ConfigError, create_dataset, create_eval_transform, create_loader, evaluate
from zoo.training.config import DataConfig
from zoo.training.data import model_data_config
from zoo.training.evaluator import confusion_summary, load_model, save_features
from zoo.training.trainer import DIGITS_IMAGE_SIZE, resolve_amp_dtype, resolve_device


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, no usage block: the message already names what is wrong and what is allowed
        self.exit(2, f'{self.prog}: error: {message}\n')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='eval.py', description=__doc__.split('\n')[0])
    parser.add_argument('--model', help='zoo model name (not needed with a training checkpoint)')
    parser.add_argument('--pretrained', action='store_true', help="the model's pretrained weights")
    parser.add_argument('--checkpoint', help='a training checkpoint, or a weights file for --model')
    parser.add_argument('--model-kwargs', type=yaml.safe_load, default={}, metavar='YAML',
                        help="extra model arguments, e.g. '{num_classes: 10}'")
    parser.add_argument('--use-ema', action='store_true', help="a training checkpoint's EMA weights")
    data = parser.add_mutually_exclusive_group()
    data.add_argument('--data-dir', help='ImageFolder root holding --split/<class>/<image>')
    data.add_argument('--digits', action='store_true', help="scikit-learn's digits, held-out split")
    parser.add_argument('--split', default='val', help='folder under --data-dir (default: val)')
    parser.add_argument('--image-size', type=int, help="input size (default: the model's or the checkpoint's)")
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--amp', choices=('bfloat16', 'float16'), help='mixed precision dtype')
    parser.add_argument('--features', metavar='OUT.pt|OUT.npz', help='save pooled pre-logits features and targets')
    parser.add_argument('--progress', action='store_true', help='show a progress bar')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not isinstance(args.model_kwargs, dict):
            raise ConfigError(f'--model-kwargs: expected a YAML mapping, got {args.model_kwargs!r}')
        if args.checkpoint is None and args.model is None:
            raise ConfigError('give --model NAME (with --pretrained or a --checkpoint file) or a training --checkpoint')
        model, state = load_model(args.model, args.checkpoint, args.pretrained, args.use_ema, args.model_kwargs)
        if args.data_dir:
            data_cfg = DataConfig(dataset='folder', root=args.data_dir, val_split=args.split)
        elif args.digits or state is None:
            if not args.digits:
                raise ConfigError('give --data-dir ROOT or --digits (only a training checkpoint names its data)')
            data_cfg = DataConfig(dataset='digits')
        else:
            data_cfg = DataConfig(**{k: v for k, v in state['config']['data'].items()
                                     if k in ('dataset', 'root', 'val_split', 'digits_val_fraction', 'image_size')})
        if state is not None and args.image_size is None:
            data_config = dict(state['data_config'])
        else:
            data_config = model_data_config(model, args.image_size)
        dataset = create_dataset(data_cfg, 'val', create_eval_transform(data_config),
                                 data_cfg.image_size or DIGITS_IMAGE_SIZE)
        device = torch.device(resolve_device(args.device))
        amp_dtype = resolve_amp_dtype(args.amp is not None, args.amp or 'bfloat16', device)
        if args.features and not args.features.endswith(('.pt', '.npz')):
            raise ConfigError(f'--features: {args.features!r} must end in .pt or .npz')
    except ConfigError as e:
        parser.error(str(e))
    except (FileNotFoundError, RuntimeError) as e:
        parser.error(' '.join(str(e).split()))

    loader = create_loader(dataset, args.batch_size, is_training=False, workers=args.workers)
    model.to(device)
    num_classes = model.num_classes
    if max(dataset.targets, default=0) >= num_classes:
        parser.error(f'the dataset has {len(dataset.classes)} classes, the model predicts {num_classes}')
    metrics = evaluate(model, loader, device, num_classes, amp_dtype, features=bool(args.features),
                       progress=args.progress)
    classes = state['classes'] if state is not None else dataset.classes
    name = state['arch'] if state is not None else args.model
    split = data_cfg.val_split if data_cfg.dataset == 'folder' else 'held-out'
    print(f'{name} on {len(dataset)} {data_cfg.dataset} {split} images at {tuple(data_config["input_size"])}')
    print(f'top-1 {metrics["top1"]:.2f}%  top-5 {metrics["top5"]:.2f}%  loss {metrics["loss"]:.4f}')
    for line in confusion_summary(metrics['confusion'], classes):
        print(line)
    print(f'throughput: {metrics["images_per_sec"]:.1f} images/s, forward passes only '
          f'(batch {args.batch_size}, {device.type}, {torch.get_num_threads()} threads)')
    if args.features:
        path = save_features(args.features, metrics['features'], metrics['targets'], classes)
        print(f'features: {tuple(metrics["features"].shape)} saved to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
