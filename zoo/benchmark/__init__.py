"""Throughput, latency, peak memory, parameters and FLOPs of models and kernels, beside their anchors.

One harness for both, in four parts:

* :mod:`~zoo.benchmark.specs`: what is asked for (devices, dtypes, modes, kernel inputs, YAML kernel cases and
  family settings), checked before anything runs;
* :mod:`~zoo.benchmark.measure`: how it is measured (interleaved timing and its statistics, peak memory,
  FLOPs, memory traffic), and :mod:`~zoo.benchmark.load`, a background load to measure under;
* :mod:`~zoo.benchmark.runner` and :mod:`~zoo.benchmark.families`: resolving models, anchors and kernels and
  measuring each group; every family beside its anchors across resolutions;
* :mod:`~zoo.benchmark.report`: CSV, Markdown, the load comparison and plots.

The kernel cases' wrappers are in :mod:`zoo.benchmark.cases`; ``tools/benchmark.py`` is the command line
(:mod:`zoo.benchmark.cli`).
"""
from .families import PLOT_RESOLUTIONS, benchmark_families, family_names, family_plan, smallest_pretrained
from .load import background_load
from .measure import (
    MEM_COLUMN,
    Stats,
    count_flops,
    interleaved_times,
    memory_method,
    min_traffic_bytes,
    peak_bandwidth_gbps,
    peak_memory,
    summarize,
)
from .report import (
    KEEP_GOAL,
    describe,
    family_figure,
    load_ratios,
    load_table,
    markdown_table,
    overview_figure,
    read_csv,
    write_csv,
    write_family_plots,
    write_markdown,
    write_plot,
)
from .runner import (
    TIMM_PREFIX,
    ZOO_PREFIX,
    benchmark_kernel,
    benchmark_models,
    compare_under_load,
    create_model,
    default_anchors,
    expand_models,
    kernel_step,
    make_inputs,
    model_step,
    resolve_callable,
    zoo_models,
)
from .specs import (
    DTYPES,
    MODES,
    AnchorSpec,
    BenchmarkError,
    FamilyConfig,
    KernelCase,
    check_device_dtype,
    check_mode,
    load_case,
    load_family_config,
    load_input_spec,
    parse_shape,
)

__all__ = [
    'DTYPES', 'MODES', 'BenchmarkError', 'check_device_dtype', 'check_mode', 'parse_shape', 'load_input_spec',
    'KernelCase', 'load_case', 'AnchorSpec', 'FamilyConfig', 'load_family_config',
    'MEM_COLUMN', 'Stats', 'summarize', 'interleaved_times', 'peak_memory', 'memory_method', 'count_flops',
    'min_traffic_bytes', 'peak_bandwidth_gbps', 'background_load',
    'TIMM_PREFIX', 'ZOO_PREFIX', 'zoo_models', 'resolve_callable', 'create_model', 'expand_models',
    'default_anchors', 'make_inputs', 'model_step', 'kernel_step', 'benchmark_models', 'benchmark_kernel',
    'compare_under_load',
    'PLOT_RESOLUTIONS', 'family_names', 'smallest_pretrained', 'family_plan', 'benchmark_families',
    'describe', 'write_csv', 'read_csv', 'markdown_table', 'write_markdown', 'write_plot', 'load_ratios',
    'load_table', 'KEEP_GOAL', 'family_figure', 'overview_figure', 'write_family_plots',
]
