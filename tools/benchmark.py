#!/usr/bin/env python3
"""Benchmark zoo models or kernels beside their anchors: img/s, latency, peak memory, params, GFLOPs.

Examples::

    python tools/benchmark.py --models 'zoo_*' --resolutions 224 --batch-size 8
    python tools/benchmark.py --models zoo_mambaout_femto --anchors timm:mambaout_femto --resolutions 160 224 288 \\
        --device cuda --dtype bf16 --compile --csv out.csv --md out.md --plot out.png
    python tools/benchmark.py --kernel torch.nn.functional:scaled_dot_product_attention \\
        --anchors mypkg.attn:naive_attention --shape q=2,4,196,32 --shape k=2,4,196,32 --shape v=2,4,196,32 --mode train
    python tools/benchmark.py --case configs/benchmarks/kernels/window/maxvit_t_stage1_block.yaml --mode train

The logic lives in :mod:`zoo.benchmark`; this script parses, calls it and writes the reports.
"""
import argparse
import json
import logging
import os
import sys
from typing import List, Optional

# the profiler (CPU peak memory) otherwise logs a spurious 'gpuGetDeviceCount failed' error on machines without GPU
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

from zoo import benchmark  # noqa: E402


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object, e.g. \'{{"depths": [1, 1, 1, 1]}}\', got {text!r}')
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, no usage block: the message already names what is wrong and what is allowed
        self.exit(2, f'{self.prog}: error: {message}\n')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='benchmark.py', description=__doc__.split('\n')[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--models', nargs='+', metavar='MODEL',
                      help="zoo names or patterns ('zoo_van_*'), timm:<name>, or module.sub:factory")
    what.add_argument('--kernel', metavar='MODULE:FN', help='an op by import path')
    what.add_argument('--case', metavar='FILE', help='a kernel case: YAML with kernel, anchors and inputs '
                                                     '(configs/benchmarks/kernels/)')
    parser.add_argument('--anchors', '--anchor', nargs='+', metavar='ANCHOR',
                        help="models or ops measured beside each model/kernel; default for models 'auto' "
                             "(timm's own model for a zoo model that has one), 'none' for no anchors")
    parser.add_argument('--model-kwargs', type=_json_object, default=None, metavar='JSON',
                        help='keyword arguments for every model constructor, e.g. \'{"depths": [1, 1, 1, 1]}\'')
    parser.add_argument('--shape', action='append', default=[], metavar='NAME=D0,D1,...[:DTYPE]',
                        help='a kernel tensor argument (positional, in order); repeat for each')
    parser.add_argument('--inputs', metavar='FILE', help='kernel arguments from a YAML/JSON file (see zoo.benchmark)')
    parser.add_argument('--resolutions', nargs='+', type=int, default=[224], metavar='PX')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--dtype', default='fp32', choices=list(benchmark.DTYPES))
    parser.add_argument('--device', default=None, help='cpu (default), cuda or cuda:<index>; a --case file may name '
                                                      'its own')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                        help='torch.compile with this backend (default inductor); compilation runs in warmup')
    parser.add_argument('--runs', type=int, default=10, help='timed runs per candidate (median reported)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--mode', default=None, choices=benchmark.MODES,
                        help='inference (default), or train: forward + backward without an optimizer; a --case file '
                             'runs the modes it lists unless this is given')
    parser.add_argument('--csv', metavar='FILE')
    parser.add_argument('--md', metavar='FILE')
    parser.add_argument('--plot', metavar='FILE', help='PNG of throughput and memory against resolution')
    return parser


def run(args: argparse.Namespace) -> List[dict]:
    common = dict(dtype=args.dtype, compile=args.compile, runs=args.runs, warmup=args.warmup)
    mode, device = args.mode or 'inference', args.device or 'cpu'
    anchors: Optional[List[str]] = args.anchors
    if anchors == ['none']:
        anchors = []
    if args.case or args.kernel:
        if args.channels_last or args.model_kwargs or args.plot:
            raise benchmark.BenchmarkError('--channels-last, --model-kwargs and --plot apply to --models only')
        if args.case:
            if args.shape or args.inputs or args.anchors:
                raise benchmark.BenchmarkError('a --case file names its own kernel, anchors and inputs; '
                                               'drop --shape, --inputs and --anchors')
            case = benchmark.load_case(args.case)
            return [row for case_mode in ([args.mode] if args.mode else case.modes)
                    for row in benchmark.benchmark_kernel(case.kernel, case.inputs, anchors=case.anchors,
                                                          mode=case_mode, device=args.device or case.device,
                                                          **common)]
        if args.inputs and args.shape:
            raise benchmark.BenchmarkError('give kernel inputs with --shape or --inputs, not both')
        inputs = (benchmark.load_input_spec(args.inputs) if args.inputs
                  else dict(map(benchmark.parse_shape, args.shape)))
        return benchmark.benchmark_kernel(args.kernel, inputs, anchors=[] if anchors == ['auto'] else anchors or [],
                                          mode=mode, device=device, **common)
    if args.shape or args.inputs:
        raise benchmark.BenchmarkError('--shape and --inputs apply to --kernel only')
    if any(r < 1 for r in args.resolutions) or args.batch_size < 1:
        raise benchmark.BenchmarkError('--resolutions and --batch-size must be positive integers')
    return benchmark.benchmark_models(
        args.models, anchors=None if anchors in (None, ['auto']) else anchors, resolutions=args.resolutions,
        batch_size=args.batch_size, channels_last=args.channels_last, model_kwargs=args.model_kwargs, mode=mode,
        device=device, **common)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rows = run(args)
    except benchmark.BenchmarkError as e:
        parser.error(str(e))
    print(benchmark.markdown_table(rows), end='')
    if args.csv:
        benchmark.write_csv(rows, args.csv)
    if args.md:
        benchmark.write_markdown(rows, args.md)
    if args.plot:
        benchmark.write_plot(rows, args.plot)
    return 0


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(message)s')  # progress on stderr; the table goes to stdout
    sys.exit(main())
