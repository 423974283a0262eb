"""zoo.benchmark.families: which model and anchors each family is measured with, and the sweep's rows."""
from pathlib import Path

import pytest
import timm

from zoo.benchmark import families
from zoo.benchmark.specs import BenchmarkError, load_family_config

from .toys import TINY_MAMBAOUT, fake_clock

CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / 'benchmarks' / 'models'


def test_families_come_from_the_registry():
    modules = {timm.models.model_entrypoint(n).__module__.rsplit('.', 1)[-1] for n in timm.list_models('zoo_*')}
    assert families.family_names() == sorted(modules)


def test_smallest_variant_with_weights():
    assert families.smallest_pretrained('van') == 'zoo_van_b0'
    assert families.smallest_pretrained('davit') == 'zoo_davit_tiny'  # davit_large is not, it has no weights
    with pytest.raises(BenchmarkError, match="unknown family 'nope'; the zoo has .*van"):
        families.smallest_pretrained('nope')


def test_plan_defaults_and_config(tmp_path):
    plan = families.family_plan('mambaout', str(tmp_path))  # no config file: the registry's defaults
    assert (plan.model, [a.name for a in plan.anchors]) == ('zoo_mambaout_femto', ['timm:mambaout_femto'])
    (tmp_path / 'mambaout.yaml').write_text('model: zoo_mambaout_kobe\nanchors: [timm:resnet18]\n')
    plan = families.family_plan('mambaout', str(tmp_path))
    assert (plan.model, [a.name for a in plan.anchors]) == ('zoo_mambaout_kobe', ['timm:resnet18'])
    (tmp_path / 'mambaout.yaml').write_text('anchors: [timm:no_such_model]\n')
    with pytest.raises(BenchmarkError, match="unknown model 'timm:no_such_model'"):
        families.family_plan('mambaout', str(tmp_path))


@pytest.mark.parametrize('config', sorted(CONFIGS.glob('*.yaml')), ids=lambda p: p.stem)
def test_shipped_family_configs_resolve(config):
    assert config.stem in families.family_names(), f'{config.name} names no zoo family'
    load_family_config(str(config))
    plan = families.family_plan(config.stem, str(CONFIGS))
    assert plan.anchors, f'{config.name}: the plots need at least one anchor'


def test_sweep_rows(tmp_path):
    """Each resolution's group is timed together; an anchor that fails at one resolution gets an error row there
    while the others are measured alone; size_kwarg passes the resolution to an anchor's constructor."""
    (tmp_path / 'mambaout.yaml').write_text(
        'anchors:\n  - {name: "tests.benchmark.toys:sized_net", size_kwarg: img_size}\n'
        '  - {name: "tests.benchmark.toys:sized_net", kwargs: {img_size: 32}}\n')
    rows = families.benchmark_families(['mambaout'], config_dir=str(tmp_path), resolutions=[32, 64], runs=1,
                                       warmup=0, timer=fake_clock(), model_kwargs=TINY_MAMBAOUT)
    sized = 'tests.benchmark.toys:sized_net'
    assert [(r['name'], r['role'], r['resolution'], r.get('error') is None) for r in rows] == [
        ('zoo_mambaout_femto', 'model', 32, True), (sized, 'anchor', 32, True), (sized, 'anchor', 32, True),
        ('zoo_mambaout_femto', 'model', 64, True), (sized, 'anchor', 64, True), (sized, 'anchor', 64, False)]
    assert 'built for 32px, got 64px' in rows[-1]['error'] and rows[-1]['throughput'] is None
    assert rows[1]['rel_throughput'] == 1.0 and rows[4]['rel_throughput'] is None  # 64: measured alone
    assert all(r['family'] == 'mambaout' and r['group'] == 'zoo_mambaout_femto' for r in rows)
    assert all(r['threads'] >= 1 and r['machine'] and r['date'] and r['torch'] for r in rows)
