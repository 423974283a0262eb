#!/usr/bin/env python3
"""Train a zoo model from a YAML config in configs/classification/, or a detector/segmentor from an mmdet/mmseg
config (a .py file in configs/mmdet/, configs/mmseg/; needs the mm extra).

Examples::

    python tools/train.py configs/classification/demo_digits.yaml
    python tools/train.py configs/classification/van_b0_imagenet.yaml --opt data.root=/data/imagenet optim.lr=2e-3
    python tools/train.py configs/classification/demo_digits.yaml --resume          # continue <output>/last.pth
    tools/dist_train.sh configs/classification/van_b0_imagenet.yaml 8 --opt data.root=/data/imagenet
    python tools/train.py configs/mmdet/van/mask-rcnn_van-b2_fpn_1x_coco.py --opt train_dataloader.batch_size=4
    tools/dist_train.sh configs/mmseg/van/upernet_van-b2_8xb2-160k_ade20k-512x512.py 8 --resume

The logic lives in :mod:`zoo.training` (classification) and :mod:`zoo.mm.runner` (mmengine's Runner for mm
configs: --opt takes mmengine's KEY=VALUE overrides, --output is the work_dir, --resume continues the latest
checkpoint there); this script parses, calls them and reports.
"""
import logging
import sys
from pathlib import Path
from typing import List, Optional

from timm.utils import setup_default_logging

from zoo.cli import ToolParser
from zoo.training import ConfigError, load_config, train


def build_parser() -> ToolParser:
    parser = ToolParser(prog='train.py', description=__doc__.split('\n')[0], aliases={'override': '--opt'})
    parser.add_argument('config', help='YAML config (keys of zoo.training.TrainConfig) or mmdet/mmseg .py config')
    parser.add_argument('--opt', nargs='+', action='extend', default=[], metavar='KEY=VALUE',
                        help='override config keys, dotted, values in YAML syntax: optim.lr=0.01 model.kwargs={...}')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='continue a run from a checkpoint (default: <output>/last.pth)')
    parser.add_argument('--output', help='output folder (config key output)')
    parser.add_argument('--wandb', action='store_true', help='log to Weights & Biases (config key log.wandb)')
    parser.add_argument('--wandb-mode', choices=('online', 'offline', 'disabled'),
                        help='wandb mode (config key log.wandb_mode); default: the WANDB_MODE environment variable')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars (config key log.progress)')
    parser.add_argument('--stop-after-epoch', type=int, metavar='N',
                        help='end this run after epoch N with a checkpoint (resume later with --resume)')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config.endswith('.py'):
        return train_dense(parser, args)
    overrides = list(args.opt)
    if args.output:
        overrides.append(f'output={args.output}')
    if args.wandb:
        overrides.append('log.wandb=true')
    if args.wandb_mode:
        overrides.append(f'log.wandb_mode={args.wandb_mode}')
    if args.no_progress:
        overrides.append('log.progress=false')
    setup_default_logging()
    try:
        cfg = load_config(args.config, overrides)
        resume = args.resume
        if resume == 'auto':
            resume = str(Path(cfg.output) / 'last.pth')
        if resume and not Path(resume).is_file():
            parser.error(f'--resume: checkpoint {resume} does not exist')
        metrics = train(cfg, resume=resume, stop_after_epoch=args.stop_after_epoch)
    except ConfigError as e:
        parser.fail(e)
    if metrics:
        logging.getLogger('train').info(
            f'done: epoch {metrics["epoch"]}, eval top1 {metrics["eval_top1"]:.2f}%, best {metrics["best_top1"]:.2f}%, '
            f'checkpoints in {cfg.output}')
    return 0


def train_dense(parser: ToolParser, args) -> int:
    """An mmdet/mmseg config: mmengine's Runner through zoo.mm (only installed with the mm extra)."""
    for flag, value in (('--wandb', args.wandb), ('--wandb-mode', args.wandb_mode),
                        ('--stop-after-epoch', args.stop_after_epoch)):
        if value:
            parser.error(f'{flag} is for classification configs; an mmdet/mmseg config sets its hooks itself '
                         f'(override them with --opt)')
    try:
        from zoo.mm import runner
    except ImportError as e:
        parser.error(f'{args.config} is an mmdet/mmseg config, which needs the mm extra (make mm): {e}')
    try:
        built = runner.build_runner(args.config, args.opt, work_dir=args.output, resume=args.resume)
    except runner.ConfigError as e:
        parser.fail(e)
    built.train()
    metrics = runner.last_metrics(built)
    print(f'done: {runner.summary(metrics) if metrics else "no validation"}, checkpoints in {built.work_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
