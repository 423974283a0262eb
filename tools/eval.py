#!/usr/bin/env python3
"""Evaluate a zoo model: top-1/top-5, loss, a confusion summary and throughput; optionally dump features.

Examples::

    python tools/eval.py --checkpoint output/demo_digits/last.pth             # the run's own held-out split
    python tools/eval.py --model zoo_van_b0 --pretrained --data-dir /data/imagenet --split val
    python tools/eval.py --model zoo_van_b0 --checkpoint van_tiny_754.pth.tar --data-dir /data/imagenet
    python tools/eval.py --checkpoint output/demo_digits/last.pth --features feats.npz

The logic lives in :mod:`zoo.training`; this script parses, calls it and reports.
"""
import sys
from typing import List, Optional

import torch
import yaml

from zoo.cli import ToolParser
from zoo.training import ConfigError
from zoo.training.evaluator import EvalJob, confusion_summary, run_evaluation, save_features


def build_parser() -> ToolParser:
    aliases = {'model.name': '--model', 'model.kwargs': '--model-kwargs', 'data.root': '--data-dir',
               'data.val_split': '--split'}
    parser = ToolParser(prog='eval.py', description=__doc__.split('\n')[0], aliases=aliases)
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
    job = EvalJob(**vars(parser.parse_args(argv)))
    try:
        result = run_evaluation(job)
    except (ConfigError, FileNotFoundError, RuntimeError) as e:
        parser.fail(e)
    metrics = result.metrics
    print(f'{result.name} on {result.num_images} {result.dataset} {result.split} images at {result.input_size}')
    print(f'top-1 {metrics["top1"]:.2f}%  top-5 {metrics["top5"]:.2f}%  loss {metrics["loss"]:.4f}')
    for line in confusion_summary(metrics['confusion'], result.classes):
        print(line)
    print(f'throughput: {metrics["images_per_sec"]:.1f} images/s, forward passes only '
          f'(batch {job.batch_size}, {result.device.type}, {torch.get_num_threads()} threads)')
    if job.features:
        path = save_features(job.features, metrics['features'], metrics['targets'], result.classes)
        print(f'features: {tuple(metrics["features"].shape)} saved to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
