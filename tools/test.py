#!/usr/bin/env python3
"""Evaluate a trained detector/segmentor: tools/test.py CONFIG CHECKPOINT (an mmdet/mmseg .py config).

Examples::

    python tools/test.py configs/mmdet/litv2/mask-rcnn_litv2-s_fpn_1x_coco.py work_dirs/mask-rcnn/epoch_12.pth
    python tools/test.py configs/mmseg/van/upernet_van-b2_8xb2-160k_ade20k-512x512.py upernet_van_b2.pth \\
        --opt test_dataloader.dataset.data_root=/data/ade/ADEChallengeData2016
    torchrun --nproc_per_node 8 tools/test.py CONFIG CHECKPOINT

CHECKPOINT may be one of this project's training checkpoints or one of the authors' own (their backbone keys are
converted on load). Classification checkpoints are evaluated with tools/eval.py. The logic lives in
:mod:`zoo.mm.runner`; this script parses, calls it and reports.
"""
import sys
from typing import List, Optional

from zoo.cli import ToolParser


def build_parser() -> ToolParser:
    parser = ToolParser(prog='test.py', description=__doc__.split('\n')[0], aliases={'override': '--opt'})
    parser.add_argument('config', help='an mmdet/mmseg .py config')
    parser.add_argument('checkpoint', help='the weights to evaluate')
    parser.add_argument('--opt', nargs='+', action='extend', default=[], metavar='KEY=VALUE',
                        help="override config keys in mmengine's syntax: test_dataloader.batch_size=2")
    parser.add_argument('--output', help='work_dir for logs and results (default: output/<config name>)')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config.endswith('.py'):
        parser.error(f'{args.config}: test.py takes mmdet/mmseg .py configs; evaluate classification checkpoints '
                     f'with tools/eval.py --checkpoint {args.checkpoint}')
    try:
        from zoo.mm import runner
    except ImportError as e:
        parser.error(f'{args.config} is an mmdet/mmseg config, which needs the mm extra (make mm): {e}')
    try:
        built = runner.build_runner(args.config, args.opt, work_dir=args.output, load_from=args.checkpoint)
    except runner.ConfigError as e:
        parser.fail(e)
    metrics = built.test()
    print(runner.summary(metrics))
    return 0


if __name__ == '__main__':
    sys.exit(main())
