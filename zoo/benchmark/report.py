"""Reports of benchmark rows: CSV, Markdown tables, the load comparison, and plots against resolution."""
import csv
import math
import os
from typing import Any, Dict, List, Sequence, Tuple

import timm
import torch

from .load import describe_load
from .measure import MEM_COLUMN
from .specs import BenchmarkError

__all__ = ['describe', 'write_csv', 'read_csv', 'markdown_table', 'write_markdown', 'write_plot', 'load_ratios',
           'load_table', 'KEEP_GOAL', 'family_figure', 'overview_figure', 'write_family_plots']

Row = Dict[str, Any]

# issue 16: under a background load every kernel case keeps at least this share of its idle speed-up
KEEP_GOAL = 2 / 3


def describe(rows: Sequence[Row]) -> List[str]:
    """The run's settings and the meaning of its columns, one line each (Markdown header)."""
    first = rows[0]
    device = first['device']
    if device.startswith('cuda'):
        hw = torch.cuda.get_device_name(torch.device(device))
    else:
        hw = f'{torch.get_num_threads()} threads'
    return [
        f'device {device} ({hw}), torch {torch.__version__}, timm {timm.__version__}, dtype {first["dtype"]}, '
        f'mode {first["mode"]}, compile {first["compile"] or "off"}, channels_last {first["channels_last"]}',
        f'{first["runs"]} timed runs after {first["warmup"]} warmup runs, interleaved within each group; '
        'latency is per call (one batch): median [IQR], and min-max; vs first: throughput relative to the first '
        'row of its group (the model or kernel its anchors stand beside)',
        f'{MEM_COLUMN}: peak bytes allocated during one call above those live before it (weights and inputs '
        f'excluded), from {first["mem_method"]}',
        'GFLOPs: matmul/conv/attention FLOPs from torch.utils.flop_counter.FlopCounterMode (2 per multiply-add), '
        'per image for models, per call for kernels; n/a where it counted none',
    ] + ([
        'GB/s: the compulsory traffic of one call (inputs read and outputs written once; in train mode also the '
        'output gradient read and input gradients written) over the median latency; % peak BW: against the '
        "card's theoretical DRAM bandwidth (CUDA only)"] if first['kind'] == 'kernel' else []) + (
        [f'background load: {describe_load(first["background_load"])}'] if first.get('background_load') else [])


def write_csv(rows: Sequence[Row], path: str) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _parse_cell(text: str) -> Any:
    if text == '':
        return None
    if text in ('True', 'False'):
        return text == 'True'
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str) -> List[Row]:
    """Rows written by :func:`write_csv`, numbers and booleans restored (empty cells are None)."""
    try:
        with open(path, newline='') as f:
            return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError as e:
        raise BenchmarkError(f'cannot read rows {path!r}: {e}') from None


def _fmt(value: Any, digits: int = 2) -> str:
    return 'n/a' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.{digits}f}'


def _input(r: Row) -> str:
    return r['inputs'] if r['kind'] == 'kernel' else f'{r["batch_size"]}x{r["resolution"]}²'


def markdown_table(rows: Sequence[Row]) -> str:
    measured = [r for r in rows if r.get('throughput') is not None]
    failed = [r for r in rows if r.get('throughput') is None]
    unit = measured[0]['unit'] if measured else 'img/s'
    per = 'img' if unit == 'img/s' else 'call'
    lines = [f'- {line}' for line in describe(measured)] + [''] if measured else []
    kernel = rows[0]['kind'] == 'kernel'
    lines.append(f'| name | role | input | {unit} | vs first | ms median [IQR] | ms min-max | peak step alloc MiB '
                 f'| params M | GFLOPs/{per} |' + (' GB/s | % peak BW |' if kernel else ''))
    lines.append('|---|---|---|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if kernel else ''))
    for r in measured:
        lines.append(
            f'| {r["name"]} | {r["role"]} | {_input(r)} | {_fmt(r["throughput"], 1)} | {_fmt(r["rel_throughput"])} '
            f'| {_fmt(r["latency_ms_median"])} [{_fmt(r["latency_ms_q1"])}, {_fmt(r["latency_ms_q3"])}] '
            f'| {_fmt(r["latency_ms_min"])}-{_fmt(r["latency_ms_max"])} | {_fmt(r[MEM_COLUMN], 1)} '
            f'| {_fmt(r["params_m"])} | {_fmt(r["gflops"], 3)} |'
            + (f' {_fmt(r.get("gbps"), 2)} | {_fmt(r.get("bandwidth_pct"), 1)} |' if kernel else ''))
    lines += [''] + [f'- failed: {r["name"]} ({r["role"]}) at {_input(r)}: {r["error"]}' for r in failed] \
        if failed else []
    return '\n'.join(lines) + '\n'


def write_markdown(rows: Sequence[Row], path: str) -> None:
    with open(path, 'w') as f:
        f.write(markdown_table(rows))


def load_ratios(rows: Sequence[Row]) -> List[Row]:
    """From rows measured idle and under a background load (:func:`zoo.benchmark.compare_under_load`): for every
    anchor, the speed-up of its group's first row (the kernel or model) over it, idle and loaded, and the share
    of the idle speed-up kept under load (``kept``; the goal is >= :data:`KEEP_GOAL`)."""
    def where(r: Row) -> Tuple:
        return r['group'], r['mode'], _input(r)

    def load(r: Row) -> int:
        return r.get('background_load') or 0

    measured = [r for r in rows if r.get('throughput')]
    firsts = {(where(r), load(r)): r for r in measured if r['role'] != 'anchor'}
    idle_anchors = {(where(r), r['name']): r for r in measured if r['role'] == 'anchor' and not load(r)}
    out = []
    for r in measured:
        if r['role'] != 'anchor' or not load(r):
            continue
        idle, idle_first = idle_anchors.get((where(r), r['name'])), firsts.get((where(r), 0))
        loaded_first = firsts.get((where(r), load(r)))
        if idle is None or idle_first is None or loaded_first is None:
            continue
        idle_speedup = idle_first['throughput'] / idle['throughput']
        loaded_speedup = loaded_first['throughput'] / r['throughput']
        out.append(dict(group=r['group'], mode=r['mode'], input=_input(r), anchor=r['name'],
                        background_load=load(r), idle_speedup=idle_speedup, loaded_speedup=loaded_speedup,
                        kept=loaded_speedup / idle_speedup))
    return out


def load_table(rows: Sequence[Row]) -> str:
    """Markdown: the speed-ups idle and under load (:func:`load_ratios`), one line per anchor."""
    ratios = load_ratios(rows)
    if not ratios:
        raise BenchmarkError('a load comparison needs rows measured idle and under load, with anchors')
    lines = [f'- speed-up: throughput of the first row of the group over the anchor\'s; loaded: while '
             f'{describe_load(ratios[0]["background_load"])}; kept: loaded speed-up / idle speed-up '
             f'(goal >= {KEEP_GOAL:.2f})', '',
             '| group | mode | input | anchor | idle speed-up | loaded speed-up | kept | goal met |',
             '|---|---|---|---|---:|---:|---:|---|']
    for r in ratios:
        lines.append(f'| {r["group"]} | {r["mode"]} | {r["input"]} | {r["anchor"]} | {r["idle_speedup"]:.2f}x '
                     f'| {r["loaded_speedup"]:.2f}x | {r["kept"]:.2f} | {"yes" if r["kept"] >= KEEP_GOAL else "no"} |')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------------- plots

def _series(rows: Sequence[Row], key: str = 'group') -> Dict[Tuple[str, str], List[Row]]:
    series: Dict[Tuple[str, str], List[Row]] = {}
    for r in rows:
        series.setdefault((r[key], r['name']), []).append(r)
    return {k: sorted(v, key=lambda r: r['resolution']) for k, v in series.items()}


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # plots only: matplotlib is not needed to measure
    fig = Figure(figsize=(width, height), layout='constrained')
    ax_speed, ax_mem = fig.subplots(1, 2)
    return fig, ax_speed, ax_mem


def _label_axes(ax_speed, ax_mem, rows: Sequence[Row]) -> None:
    resolutions = sorted({r['resolution'] for r in rows})
    first = rows[0]
    ax_speed.set(xlabel='input resolution (px, square)',
                 ylabel=f'throughput (img/s, median, batch {first["batch_size"]})', yscale='log', title='throughput')
    ax_mem.set(xlabel='input resolution (px, square)', ylabel='peak allocation per call (MiB)', yscale='log',
               title='peak memory (weights and inputs excluded)')
    for ax in (ax_speed, ax_mem):
        ax.set_xticks(resolutions)
        ax.grid(alpha=0.3, which='both')


def _measured_on(rows: Sequence[Row]) -> str:
    first = rows[0]
    load = first.get('background_load')
    return (f'measured on {first["machine"]}, {first["threads"]} threads, torch {first["torch"]}, '
            f'timm {first["timm"]}, {first["date"]}' + (f', background load of {load} threads' if load else ''))


def write_plot(rows: Sequence[Row], path: str) -> None:
    """Throughput and peak memory against resolution, one line per model (model rows only)."""
    rows = [r for r in rows if r['kind'] == 'model']
    if not rows:
        raise BenchmarkError('the plot shows models against resolution; this run has no model rows')
    fig, ax_speed, ax_mem = _new_figure(13, 4.5)
    series = _series(rows)
    from matplotlib import colormaps
    colors = colormaps['tab20'].resampled(max(len(series), 2))
    for i, ((group, name), points) in enumerate(series.items()):
        anchor = group != name
        style = dict(marker='o', color=colors(i), linestyle='--' if anchor else '-',
                     label=f'{name} (anchor of {group})' if anchor else name)
        res = [r['resolution'] for r in points]
        ax_speed.plot(res, [r['throughput'] for r in points], **style)
        ax_mem.plot(res, [r[MEM_COLUMN] for r in points], **style)
    first = rows[0]
    ax_speed.set(xlabel='resolution (px)', ylabel='img/s (median)', yscale='log',
                 title=f'{first["mode"]}, batch {first["batch_size"]}, {first["dtype"]}, {first["device"]}')
    ax_mem.set(xlabel='resolution (px)', ylabel=f'{MEM_COLUMN} (MiB)', title='peak allocation per call')
    for ax in (ax_speed, ax_mem):
        ax.grid(alpha=0.3)
    fig.legend(*ax_speed.get_legend_handles_labels(), loc='outside right upper', fontsize='small')
    fig.savefig(path, dpi=120)


_ANCHOR_MARKERS = 'sD^vP*X'


def family_figure(rows: Sequence[Row], family: str):
    """A family's model and its anchors: throughput and peak memory against resolution (a matplotlib Figure).
    Rows are :func:`zoo.benchmark.benchmark_families`'s; a candidate's failed resolutions are named in its label."""
    rows = [r for r in rows if r.get('family') == family]
    measured = [r for r in rows if r.get('throughput') is not None]
    if not measured:
        raise BenchmarkError(f'no measured rows for family {family!r}')
    fig, ax_speed, ax_mem = _new_figure(11, 5.2)
    anchors = 0
    for (_, name), points in _series(rows, key='family').items():
        done = [r for r in points if r.get('throughput') is not None]
        failed = [str(r['resolution']) for r in points if r.get('throughput') is None]
        model = points[0]['role'] == 'model'
        label = f'{name} (zoo)' if model else f'{name} (anchor)'
        if failed:
            label += f', failed at {", ".join(failed)} px'
        if model:
            style = dict(color='C0', linestyle='-', marker='o', linewidth=2.2, zorder=3)
        else:
            anchors += 1
            style = dict(color=f'C{anchors}', linestyle='--', marker=_ANCHOR_MARKERS[(anchors - 1) % 7])
        res = [r['resolution'] for r in done]
        ax_speed.plot(res, [r['throughput'] for r in done], label=label, **style)
        ax_mem.plot(res, [r[MEM_COLUMN] for r in done], label=label, **style)
    _label_axes(ax_speed, ax_mem, measured)
    first = measured[0]
    fig.suptitle(f'{family}: {first["group"]} beside its anchors ({first["mode"]}, {first["dtype"]}, '
                 f'{first["device"]})\n{_measured_on(measured)}', fontsize='medium')
    handles, labels = ax_speed.get_legend_handles_labels()
    fig.legend(handles, labels, loc='outside lower center', ncols=min(len(labels), 3), fontsize='small')
    return fig


def overview_figure(rows: Sequence[Row]):
    """Every family's model (anchors are in the families' own plots): throughput and peak memory against
    resolution (a matplotlib Figure)."""
    models = [r for r in rows if r.get('role') == 'model' and r.get('throughput') is not None]
    if not models:
        raise BenchmarkError('no measured model rows to plot')
    fig, ax_speed, ax_mem = _new_figure(12, 5.6)
    from matplotlib import colormaps
    series = _series(models, key='family')
    colors = colormaps['tab20']
    for i, ((family, name), points) in enumerate(sorted(series.items())):
        # tab20's ten strong colours first, then their light twins
        style = dict(color=colors((2 * i) % 20 + (i // 10) % 2), marker='os^Dv<>ph*'[i % 10],
                     label=f'{family} ({name})')
        res = [r['resolution'] for r in points]
        ax_speed.plot(res, [r['throughput'] for r in points], **style)
        ax_mem.plot(res, [r[MEM_COLUMN] for r in points], **style)
    _label_axes(ax_speed, ax_mem, models)
    first = models[0]
    fig.suptitle(f'zoo families, smallest variant with weights ({first["mode"]}, {first["dtype"]}, '
                 f'{first["device"]}); anchors in each model card\n{_measured_on(models)}', fontsize='medium')
    handles, labels = ax_speed.get_legend_handles_labels()
    fig.legend(handles, labels, loc='outside lower center', ncols=min(len(labels), 4), fontsize='small')
    return fig


def write_family_plots(rows: Sequence[Row], out_dir: str, dpi: int = 110) -> List[str]:
    """``<out_dir>/<family>.png`` for every family in the rows and ``<out_dir>/overview.png``; the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for family in sorted({r['family'] for r in rows if r.get('family')}):
        paths.append(os.path.join(out_dir, f'{family}.png'))
        family_figure(rows, family).savefig(paths[-1], dpi=dpi)
    paths.append(os.path.join(out_dir, 'overview.png'))
    overview_figure(rows).savefig(paths[-1], dpi=dpi)
    return paths
