"""The command line behind ``tools/benchmark.py``: arguments, the calls they make, the reports they write.

Examples::

    python tools/benchmark.py --models 'zoo_*' --resolutions 224 --batch-size 8
    python tools/benchmark.py --models zoo_mambaout_femto --anchors timm:mambaout_femto --resolutions 160 224 288 \\
        --device cuda --dtype bf16 --compile --csv out.csv --md out.md --plot out.png
    python tools/benchmark.py --kernel torch.nn.functional:scaled_dot_product_attention \\
        --anchors mypkg.attn:naive_attention --shape q=2,4,196,32 --shape k=2,4,196,32 --shape v=2,4,196,32 --mode train
    python tools/benchmark.py --case configs/benchmarks/kernels/window/maxvit_t_stage1_block.yaml --mode train
    python tools/benchmark.py --case configs/benchmarks/kernels/window/maxvit_t_stage1_block.yaml --compare-load 2
    python tools/benchmark.py --families --out-dir model_cards/bench      # every family at 224, 512, 800, 1024
    python tools/benchmark.py --render model_cards/bench/results.csv --out-dir model_cards/bench
"""
import argparse
import json
import logging
import os
from typing import List, Optional

from ..cli import ToolParser
from . import families as _families
from . import report, runner, specs

__all__ = ['build_parser', 'main']

_FAMILY_CONFIGS = os.path.join('configs', 'benchmarks', 'models')
_OUT_DIR = os.path.join('model_cards', 'bench')

_logger = logging.getLogger(__name__)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object, e.g. \'{{"depths": [1, 1, 1, 1]}}\', got {text!r}')
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected a number of threads >= 0, got {text!r}')
    return value


def build_parser() -> ToolParser:
    parser = ToolParser(prog='benchmark.py', description='Benchmark zoo models or kernels beside their anchors: '
                                                      'img/s, latency, peak memory, params, GFLOPs.')
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--models', nargs='+', metavar='MODEL',
                      help="zoo names or patterns ('zoo_van_*'), timm:<name>, or module.sub:factory")
    what.add_argument('--kernel', metavar='MODULE:FN', help='an op by import path')
    what.add_argument('--case', metavar='FILE', help='a kernel case: YAML with kernel, anchors and inputs '
                                                     '(configs/benchmarks/kernels/)')
    what.add_argument('--families', nargs='*', metavar='FAMILY',
                      help='every zoo family (or those named): its smallest variant with weights beside its anchors '
                           'at each resolution (default 224 512 800 1024, batch 1); writes results.csv, '
                           '<family>.png and overview.png to --out-dir')
    what.add_argument('--render', metavar='CSV', help="redraw the plots of a --families run's results.csv into "
                                                      '--out-dir, measuring nothing')
    parser.add_argument('--anchors', '--anchor', nargs='+', metavar='ANCHOR',
                        help="models or ops measured beside each model/kernel; default for models 'auto' "
                             "(timm's own model for a zoo model that has one), 'none' for no anchors")
    parser.add_argument('--model-kwargs', type=_json_object, default=None, metavar='JSON',
                        help='keyword arguments for every model constructor, e.g. \'{"depths": [1, 1, 1, 1]}\'')
    parser.add_argument('--shape', action='append', default=[], metavar='NAME=D0,D1,...[:DTYPE]',
                        help='a kernel tensor argument (positional, in order); repeat for each')
    parser.add_argument('--inputs', metavar='FILE', help='kernel arguments from a YAML/JSON file (see zoo.benchmark)')
    parser.add_argument('--resolutions', nargs='+', type=int, default=None, metavar='PX',
                        help='default 224 (--families: 224 512 800 1024)')
    parser.add_argument('--batch-size', type=int, default=None, help='default 32 (--families: 1)')
    parser.add_argument('--dtype', default='fp32', choices=list(specs.DTYPES))
    parser.add_argument('--device', default=None, help='cpu (default), cuda or cuda:<index>; a --case file may name '
                                                      'its own')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                        help='torch.compile with this backend (default inductor); compilation runs in warmup')
    parser.add_argument('--runs', type=int, default=10, help='timed runs per candidate (median reported)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--mode', default=None, choices=specs.MODES,
                        help='inference (default), or train: forward + backward without an optimizer; a --case file '
                             'runs the modes it lists unless this is given')
    load = parser.add_mutually_exclusive_group()
    load.add_argument('--background-load', type=_threads, default=0, metavar='N',
                      help='measure while another process, started and stopped by the harness, keeps N threads busy '
                           '(as dataloader workers or a second DDP rank do); default 0: none')
    load.add_argument('--compare-load', type=_threads, default=None, metavar='N',
                      help='measure idle, then under a background load of N threads, and report each speed-up over '
                           'the anchors in both and the share kept')
    parser.add_argument('--family-configs', metavar='DIR', default=None,
                        help=f'--families: per-family model and anchors, <DIR>/<family>.yaml '
                             f'(default {_FAMILY_CONFIGS})')
    parser.add_argument('--out-dir', metavar='DIR', default=None,
                        help=f'--families, --render: where results.csv and the plots go (default {_OUT_DIR})')
    parser.add_argument('--csv', metavar='FILE')
    parser.add_argument('--md', metavar='FILE')
    parser.add_argument('--plot', metavar='FILE', help='PNG of throughput and memory against resolution')
    return parser


def _drop(flags: List[str], reason: str) -> None:
    if flags:
        raise specs.BenchmarkError(f'{reason}; drop {", ".join(flags)}')


def _measure(args: argparse.Namespace, background_load: int) -> List[dict]:
    common = dict(dtype=args.dtype, compile=args.compile, runs=args.runs, warmup=args.warmup,
                  background_load=background_load)
    mode, device = args.mode or 'inference', args.device or 'cpu'
    anchors: Optional[List[str]] = args.anchors
    if anchors == ['none']:
        anchors = []
    if args.case:
        case = specs.load_case(args.case)
        return [row for case_mode in ([args.mode] if args.mode else case.modes)
                for row in runner.benchmark_kernel(case.kernel, case.inputs, anchors=case.anchors, mode=case_mode,
                                                   device=args.device or case.device, **common)]
    if args.kernel:
        inputs = specs.load_input_spec(args.inputs) if args.inputs else dict(map(specs.parse_shape, args.shape))
        return runner.benchmark_kernel(args.kernel, inputs, anchors=[] if anchors == ['auto'] else anchors or [],
                                       mode=mode, device=device, **common)
    return runner.benchmark_models(
        args.models, anchors=None if anchors in (None, ['auto']) else anchors, resolutions=args.resolutions or [224],
        batch_size=args.batch_size or 32, channels_last=args.channels_last, model_kwargs=args.model_kwargs,
        mode=mode, device=device, **common)


def _check(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (('--family-configs', args.family_configs), ('--out-dir', args.out_dir))
             if value is not None]
    if args.families is None and args.render is None:
        _drop(given, '--family-configs and --out-dir apply to --families and --render only')
    if args.case or args.kernel:
        if args.channels_last or args.model_kwargs or args.plot:
            raise specs.BenchmarkError('--channels-last, --model-kwargs and --plot apply to --models only')
        if args.case and (args.shape or args.inputs or args.anchors):
            raise specs.BenchmarkError('a --case file names its own kernel, anchors and inputs; '
                                       'drop --shape, --inputs and --anchors')
        if args.kernel and args.inputs and args.shape:
            raise specs.BenchmarkError('give kernel inputs with --shape or --inputs, not both')
        return
    if args.shape or args.inputs:
        raise specs.BenchmarkError('--shape and --inputs apply to --kernel only')
    if any(r < 1 for r in args.resolutions or [1]) or (args.batch_size is not None and args.batch_size < 1):
        raise specs.BenchmarkError('--resolutions and --batch-size must be positive integers')
    if args.families is not None:
        _drop([flag for flag, value in (('--anchors', args.anchors), ('--channels-last', args.channels_last),
                                        ('--compile', args.compile), ('--plot', args.plot),
                                        ('--compare-load', args.compare_load is not None)) if value],
              '--families measures each family beside the anchors its config names (--family-configs), eager, '
              'and plots into --out-dir')


def _run_families(args: argparse.Namespace) -> List[dict]:
    config_dir = args.family_configs or _FAMILY_CONFIGS
    names = args.families or _families.family_names()
    for family in names:  # every config is checked before hours of measuring start
        _families.family_plan(family, config_dir)
    out_dir = args.out_dir or _OUT_DIR
    os.makedirs(out_dir, exist_ok=True)
    rows: List[dict] = []
    for family in names:
        rows += _families.benchmark_families(
            [family], config_dir=config_dir, resolutions=args.resolutions or _families.PLOT_RESOLUTIONS,
            batch_size=args.batch_size or 1, dtype=args.dtype, device=args.device or 'cpu',
            mode=args.mode or 'inference', runs=args.runs, warmup=args.warmup,
            background_load=args.background_load, model_kwargs=args.model_kwargs)
        report.write_csv(rows, os.path.join(out_dir, 'results.csv'))  # kept family by family: a stop loses one
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.render is not None:
            rows = report.read_csv(args.render)
            for path in report.write_family_plots(rows, args.out_dir or _OUT_DIR):
                print(f'written: {path}')
            return 0
        _check(args)
        if args.families is not None:
            rows = _run_families(args)
            text = report.markdown_table(rows)
        elif args.compare_load is not None:
            rows = runner.compare_under_load(lambda background_load: _measure(args, background_load),
                                             args.compare_load)
            idle = [r for r in rows if not r['background_load']]
            loaded = [r for r in rows if r['background_load']]
            text = '\n'.join(['### idle', '', report.markdown_table(idle), '### under load', '',
                              report.markdown_table(loaded), '### speed-up kept under load', '',
                              report.load_table(rows)])
        else:
            rows = _measure(args, args.background_load)
            text = report.markdown_table(rows)
        if args.families is not None:
            written = report.write_family_plots(rows, args.out_dir or _OUT_DIR)
    except specs.BenchmarkError as e:
        parser.error(str(e))
    print(text, end='')
    if args.csv:
        report.write_csv(rows, args.csv)
    if args.md:
        with open(args.md, 'w') as f:
            f.write(text)
    if args.plot:
        report.write_plot(rows, args.plot)
    if args.families is not None:
        for path in [os.path.join(args.out_dir or _OUT_DIR, 'results.csv'), *written]:
            print(f'written: {path}')
    return 0
