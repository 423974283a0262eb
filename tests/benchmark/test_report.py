"""zoo.benchmark.report: CSV, Markdown, the load comparison and the plots (on rows made up here)."""
import csv

import matplotlib.image
import pytest

from zoo.benchmark import report, runner
from zoo.benchmark.measure import MEM_COLUMN
from zoo.benchmark.specs import BenchmarkError

from .toys import SDPA, fake_clock

TINY = 'tests.benchmark.toys:tiny_net'
CONTEXT = dict(machine='Test CPU 9000, 2 cores', threads=2, torch='2.14.1', timm='1.0.31', date='2024-05-06')


def family_rows(family, model, anchors, resolutions=(224, 512, 800, 1024), failed=()):
    rows = []
    for res in resolutions:
        for i, name in enumerate([model, *anchors]):
            row = dict(name=name, role='model' if i == 0 else 'anchor', group=model, family=family, kind='model',
                       mode='inference', dtype='fp32', device='cpu', resolution=res, batch_size=1, **CONTEXT)
            if (name, res) in failed:
                row.update(throughput=None, error='OutOfMemoryError: no')
            else:
                row.update(throughput=100 / (i + 1) * (224 / res) ** 2, **{MEM_COLUMN: 10 * (i + 1) * (res / 224) ** 2})
            rows.append(row)
    return rows


def test_reports(tmp_path):
    rows = runner.benchmark_models(['zoo_van_b0'], anchors=[TINY], resolutions=[8, 16], batch_size=1, runs=2,
                                   warmup=0, model_kwargs={}, timer=fake_clock())
    report.write_csv(rows, tmp_path / 'out.csv')
    with open(tmp_path / 'out.csv') as f:
        table = list(csv.DictReader(f))
    assert [(r['name'], r['role'], r['resolution']) for r in table] == [
        ('zoo_van_b0', 'model', '8'), (TINY, 'anchor', '8'), ('zoo_van_b0', 'model', '16'), (TINY, 'anchor', '16')]
    assert float(table[0]['throughput']) == 1.0 and float(table[0][MEM_COLUMN]) > 0
    # numbers and booleans come back; empty cells (None, and compile '' when off) as None
    assert report.read_csv(tmp_path / 'out.csv') == [{k: None if v == '' else v for k, v in r.items()} for r in rows]

    report.write_markdown(rows, tmp_path / 'out.md')
    lines = (tmp_path / 'out.md').read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('| name |'))
    preamble = '\n'.join(lines[:header])
    assert 'peak_step_alloc_mib' in preamble and 'cpu allocator' in preamble and 'background load' not in preamble
    body = [line.split('|')[1:-1] for line in lines[header + 2:]]
    assert [(c[0].strip(), c[1].strip(), c[2].strip()) for c in body] == [
        ('zoo_van_b0', 'model', '1x8²'), (TINY, 'anchor', '1x8²'),
        ('zoo_van_b0', 'model', '1x16²'), (TINY, 'anchor', '1x16²')]
    assert all(len(c) == len(lines[header].split('|')) - 2 for c in body)

    report.write_plot(rows, tmp_path / 'out.png')
    image = matplotlib.image.imread(tmp_path / 'out.png')
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_kernel_table_has_bandwidth_columns():
    shape = dict(shape=[2, 2, 16, 8])
    rows = runner.benchmark_kernel(SDPA, dict(q=shape, k=shape, v=shape), runs=1, warmup=0)
    table = report.markdown_table(rows)
    assert '| GB/s | % peak BW |' in table and 'compulsory traffic' in table
    with pytest.raises(BenchmarkError, match='no model rows'):
        report.write_plot(rows, 'never.png')


def test_failed_rows_are_listed_not_tabulated():
    rows = family_rows('van', 'zoo_van_b0', ['timm:resnet18'], resolutions=[224], failed={('timm:resnet18', 224)})
    for row in rows:
        row.update(compile='', channels_last=False, runs=1, warmup=0, mem_method='m', unit='img/s',
                   rel_throughput=1.0, latency_ms_median=1.0, latency_ms_q1=1.0, latency_ms_q3=1.0,
                   latency_ms_min=1.0, latency_ms_max=1.0, params_m=1.0, gflops=1.0)
    table = report.markdown_table(rows)
    assert '| zoo_van_b0 | model |' in table and '| timm:resnet18 |' not in table
    assert table.rstrip().endswith('- failed: timm:resnet18 (anchor) at 1x224²: OutOfMemoryError: no')


def kernel_rows(load, kernel_speed, anchor_speed):
    common = dict(group='k', mode='train', kind='kernel', inputs='q=1x2', background_load=load)
    return [dict(name='k', role='kernel', throughput=kernel_speed, **common),
            dict(name='a', role='anchor', throughput=anchor_speed, **common)]


def test_load_ratios_and_table():
    rows = kernel_rows(0, 30.0, 1.0) + kernel_rows(2, 9.0, 0.5)
    (ratio,) = report.load_ratios(rows)
    assert ratio == dict(group='k', mode='train', input='q=1x2', anchor='a', background_load=2, idle_speedup=30.0,
                         loaded_speedup=18.0, kept=pytest.approx(0.6))
    table = report.load_table(rows)
    assert '| k | train | q=1x2 | a | 30.00x | 18.00x | 0.60 | no |' in table
    assert 'kept 2 threads busy' in table and 'goal >= 0.67' in table
    assert '| yes |' in report.load_table(kernel_rows(0, 30.0, 1.0) + kernel_rows(2, 21.0, 1.0))
    with pytest.raises(BenchmarkError, match='needs rows measured idle and under load'):
        report.load_table(kernel_rows(0, 30.0, 1.0))


def legend_texts(fig):
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_family_figure_has_labelled_axes_and_names_the_anchors():
    rows = family_rows('maxvit', 'zoo_maxvit_tiny_tf_224', ['timm:maxvit_tiny_tf_224', 'timm:convnext_tiny'],
                       failed={('timm:convnext_tiny', 1024)})
    rows += family_rows('van', 'zoo_van_b0', ['timm:resnet18'])
    fig = report.family_figure(rows, 'maxvit')
    speed, mem = fig.axes
    assert speed.get_xlabel() == mem.get_xlabel() == 'input resolution (px, square)'
    assert speed.get_ylabel() == 'throughput (img/s, median, batch 1)'
    assert mem.get_ylabel() == 'peak allocation per call (MiB)'
    assert list(speed.get_xticks()) == [224, 512, 800, 1024]
    assert legend_texts(fig) == ['zoo_maxvit_tiny_tf_224 (zoo)', 'timm:maxvit_tiny_tf_224 (anchor)',
                                 'timm:convnext_tiny (anchor), failed at 1024 px']
    title = fig._suptitle.get_text()
    assert 'zoo_maxvit_tiny_tf_224' in title and 'Test CPU 9000, 2 cores' in title
    assert '2 threads' in title and '2024-05-06' in title and 'torch 2.14.1' in title
    lines = speed.get_lines()
    assert [len(line.get_xdata()) for line in lines] == [4, 4, 3]  # the failed point is left out
    assert len({line.get_linestyle() for line in lines[1:]}) == 1 and lines[0].get_linestyle() == '-'
    with pytest.raises(BenchmarkError, match="no measured rows for family 'lite'"):
        report.family_figure(rows, 'lite')


def test_overview_figure_shows_every_family():
    rows = family_rows('van', 'zoo_van_b0', ['timm:resnet18']) + family_rows('davit', 'zoo_davit_tiny',
                                                                             ['timm:davit_tiny'])
    fig = report.overview_figure(rows)
    assert legend_texts(fig) == ['davit (zoo_davit_tiny)', 'van (zoo_van_b0)']  # models only
    assert fig.axes[0].get_ylabel().startswith('throughput') and fig.axes[1].get_ylabel().startswith('peak')
    assert 'measured on Test CPU 9000, 2 cores, 2 threads' in fig._suptitle.get_text()


def test_write_family_plots(tmp_path):
    rows = family_rows('van', 'zoo_van_b0', ['timm:resnet18']) + family_rows('davit', 'zoo_davit_tiny',
                                                                             ['timm:davit_tiny'])
    report.write_csv(rows, tmp_path / 'results.csv')
    paths = report.write_family_plots(report.read_csv(tmp_path / 'results.csv'), str(tmp_path / 'plots'))
    assert [p.rsplit('/', 1)[1] for p in paths] == ['davit.png', 'van.png', 'overview.png']
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[1] > 800
