#!/usr/bin/env python3
"""Benchmark zoo models or kernels beside their anchors: img/s, latency, peak memory, params, GFLOPs.

Examples::

    python tools/benchmark.py --models 'zoo_*' --resolutions 224 --batch-size 8
    python tools/benchmark.py --models zoo_mambaout_femto --anchors timm:mambaout_femto --resolutions 160 224 288 \\
        --device cuda --dtype bf16 --compile --csv out.csv --md out.md --plot out.png
    python tools/benchmark.py --kernel torch.nn.functional:scaled_dot_product_attention \\
        --anchors mypkg.attn:naive_attention --shape q=2,4,196,32 --shape k=2,4,196,32 --shape v=2,4,196,32 --mode train
    python tools/benchmark.py --case configs/benchmarks/kernels/window/maxvit_t_stage1_block.yaml --mode train
    python tools/benchmark.py --case configs/benchmarks/kernels/window/maxvit_t_stage1_block.yaml --compare-load 2
    python tools/benchmark.py --families --out-dir model_cards/bench      # every family at 224, 512, 800, 1024

The arguments, the calls and the reports are :mod:`zoo.benchmark.cli`; the measuring is :mod:`zoo.benchmark`.
"""
import logging
import os
import sys

# the profiler (CPU peak memory) otherwise logs a spurious 'gpuGetDeviceCount failed' error on machines without GPU
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

from zoo.benchmark.cli import main  # noqa: E402

if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(message)s')  # progress on stderr; the table goes to stdout
    sys.exit(main())
