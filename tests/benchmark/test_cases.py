"""zoo.benchmark.cases and the shipped kernel cases (configs/benchmarks/kernels/<op>/*.yaml)."""
from pathlib import Path

import pytest

from zoo.benchmark import resolve_callable
from zoo.benchmark.specs import load_case

CASES = Path(__file__).resolve().parents[2] / 'configs' / 'benchmarks' / 'kernels'


@pytest.mark.parametrize('case', sorted(CASES.glob('*/*.yaml')), ids=lambda p: f'{p.parent.name}/{p.stem}')
def test_shipped_kernel_cases_resolve(case):
    """Every case `make bench-kernels` runs names importable callables of its op's module and tensor inputs."""
    spec = load_case(str(case))
    for path in [spec.kernel, *spec.anchors]:
        assert callable(resolve_callable(path))
    assert spec.kernel.startswith(f'zoo.benchmark.cases.{case.parent.name}:')
    assert any('shape' in v for v in spec.inputs.values() if isinstance(v, dict))
    assert (spec.device == 'cuda') == case.stem.endswith('_triton')
