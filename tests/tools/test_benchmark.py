"""tools/benchmark.py: arguments, reports, anchors and error lines. Nothing here asserts on time."""
import csv
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Optional

import matplotlib.image
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'tools' / 'benchmark.py'
TINY_MAMBAOUT = '{"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}'
SDPA = 'torch.nn.functional:scaled_dot_product_attention'
QKV = ['--shape', 'q=1,2,16,8', '--shape', 'k=1,2,16,8', '--shape', 'v=1,2,16,8']


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: Optional[float] = None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


@pytest.fixture(scope='module')
def cli():
    spec = importlib.util.spec_from_file_location('benchmark_cli', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_models_with_default_anchor_write_every_report(cli, tmp_path, capsys):
    out = {ext: tmp_path / f'bench.{ext}' for ext in ('csv', 'md', 'png')}
    assert cli.main([
        '--models', 'zoo_mambaout_femto', '--model-kwargs', TINY_MAMBAOUT, '--resolutions', '32', '48',
        '--batch-size', '2', '--runs', '2', '--warmup', '1',
        '--csv', str(out['csv']), '--md', str(out['md']), '--plot', str(out['png'])]) == 0
    rows = read_csv(out['csv'])
    assert [(r['name'], r['role'], r['resolution']) for r in rows] == [
        ('zoo_mambaout_femto', 'model', '32'), ('timm:mambaout_femto', 'anchor', '32'),
        ('zoo_mambaout_femto', 'model', '48'), ('timm:mambaout_femto', 'anchor', '48')]
    assert all(float(r['throughput']) > 0 and r['dtype'] == 'fp32' and r['device'] == 'cpu' for r in rows)
    md = out['md'].read_text()
    assert md == capsys.readouterr().out
    assert md.count('| zoo_mambaout_femto | model |') == 2 and md.count('| timm:mambaout_femto | anchor |') == 2
    assert matplotlib.image.imread(out['png']).ndim == 3


def test_explicit_and_no_anchors(cli, tmp_path):
    path = tmp_path / 'out.csv'
    common = ['--model-kwargs', TINY_MAMBAOUT, '--resolutions', '32', '--batch-size', '1', '--runs', '1',
              '--warmup', '0', '--csv', str(path)]
    cli.main(['--models', 'zoo_mambaout_femto', '--anchors', 'none', *common])
    assert [r['name'] for r in read_csv(path)] == ['zoo_mambaout_femto']
    cli.main(['--models', 'zoo_mambaout_femto', '--anchor', 'timm:mambaout_femto', 'zoo_mambaout_kobe',
              '--mode', 'train', '--channels-last', *common])
    rows = read_csv(path)
    assert [(r['name'], r['role'], r['mode'], r['channels_last']) for r in rows] == [
        ('zoo_mambaout_femto', 'model', 'train', 'True'), ('timm:mambaout_femto', 'anchor', 'train', 'True'),
        ('zoo_mambaout_kobe', 'anchor', 'train', 'True')]


@pytest.mark.parametrize('mode', ['inference', 'train'])
def test_kernel_sdpa_vs_reference(cli, tmp_path, mode):
    path = tmp_path / 'kernel.csv'
    cli.main(['--kernel', SDPA, '--anchors', 'tests.tools.test_benchmark:reference_attention', *QKV,
              '--mode', mode, '--runs', '2', '--warmup', '1', '--csv', str(path)])
    rows = read_csv(path)
    assert [(r['name'], r['role'], r['kind'], r['mode']) for r in rows] == [
        (SDPA, 'kernel', 'kernel', mode), ('tests.tools.test_benchmark:reference_attention', 'anchor', 'kernel', mode)]
    assert all(r['unit'] == 'calls/s' and r['inputs'] == 'q=1x2x16x8 k=1x2x16x8 v=1x2x16x8' for r in rows)
    assert rows[0]['gflops'] and rows[1]['gflops']


def test_kernel_inputs_file(cli, tmp_path):
    spec = tmp_path / 'sdpa.yaml'
    spec.write_text('q: [1, 2, 8, 4]\nk: [1, 2, 8, 4]\nv: [1, 2, 8, 4]\nis_causal: true\n')
    path = tmp_path / 'kernel.csv'
    cli.main(['--kernel', SDPA, '--inputs', str(spec), '--dtype', 'bf16', '--runs', '1', '--csv', str(path)])
    (row,) = read_csv(path)
    assert (row['name'], row['dtype'], row['inputs']) == (SDPA, 'bf16', 'q=1x2x8x4 k=1x2x8x4 v=1x2x8x4')


def test_kernel_case_file(cli, tmp_path):
    case = tmp_path / 'case.yaml'
    case.write_text(f'description: tiny attention\nkernel: {SDPA}\n'
                    'anchors: [tests.tools.test_benchmark:reference_attention]\n'
                    'inputs: {q: [1, 2, 8, 4], k: [1, 2, 8, 4], v: [1, 2, 8, 4], scale: 0.5}\n')
    path = tmp_path / 'case.csv'
    cli.main(['--case', str(case), '--runs', '1', '--csv', str(path)])
    rows = read_csv(path)
    ref = 'tests.tools.test_benchmark:reference_attention'
    assert [(r['name'], r['role'], r['mode']) for r in rows] == [
        (SDPA, 'kernel', 'inference'), (ref, 'anchor', 'inference'),
        (SDPA, 'kernel', 'train'), (ref, 'anchor', 'train')]
    assert all(r['inputs'] == 'q=1x2x8x4 k=1x2x8x4 v=1x2x8x4' and r['device'] == 'cpu' for r in rows)
    case.write_text(case.read_text() + 'modes: [inference]\n')
    cli.main(['--case', str(case), '--runs', '1', '--csv', str(path)])
    assert [r['mode'] for r in read_csv(path)] == ['inference', 'inference']
    cli.main(['--case', str(case), '--mode', 'train', '--runs', '1', '--csv', str(path)])  # the flag wins
    assert [r['mode'] for r in read_csv(path)] == ['train', 'train']


@pytest.mark.parametrize('text, message', [
    ('kernel: a:b\n', 'must be a mapping with keys kernel and inputs'),
    ('kernel: a:b\ninputs: {q: [1]}\nruns: 3\n', "unknown keys ['runs']"),
    ('kernel: [a]\ninputs: {q: [1]}\n', 'kernel and anchors are import paths'),
    ('kernel: a:b\ninputs: [1, 2]\n', 'inputs must be a mapping'),
    ('kernel: a:b\ninputs: {q: [1]}\nmodes: [eval]\n', 'modes must be a non-empty list of inference, train'),
    ('kernel: a:b\ninputs: {q: [1]}\ndevice: tpu\n', 'device must be cpu or cuda'),
])
def test_bad_case_file(cli, capsys, tmp_path, text, message):
    case = tmp_path / 'case.yaml'
    case.write_text(text)
    with pytest.raises(SystemExit):
        cli.main(['--case', str(case)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['--models', 'zoo_nope'], "unknown model 'zoo_nope'; expected a zoo model"),
    (['--models', 'timm:not_a_timm_model'], "unknown model 'timm:not_a_timm_model'"),
    (['--models', 'zoo_van_b0', '--anchors', 'nowhere_pkg:factory'], "cannot import module 'nowhere_pkg'"),
    (['--models', 'zoo_van_b0', '--dtype', 'fp16'], 'dtype fp16 is not benchmarked on cpu'),
    # argparse's own wording (quotes around choices vary between Python versions)
    (['--models', 'zoo_van_b0', '--dtype', 'fp64'], ("--dtype: invalid choice: 'fp64'", 'fp32', 'bf16', 'fp16')),
    (['--models', 'zoo_van_b0', '--mode', 'eval'], ("--mode: invalid choice: 'eval'", 'inference', 'train')),
    (['--models', 'zoo_van_b0', '--device', 'gpu'], "bad device 'gpu'; allowed: cpu, cuda, cuda:<index>"),
    (['--models', 'zoo_van_b0', '--model-kwargs', '[1]'], 'expected a JSON object'),
    (['--models', 'zoo_van_b0', '--batch-size', '0'], '--resolutions and --batch-size must be positive'),
    (['--models', 'zoo_van_b0', '--shape', 'q=1,2'], '--shape and --inputs apply to --kernel only'),
    (['--models', 'zoo_van_b0', '--kernel', SDPA], 'not allowed with argument'),
    ([], 'one of the arguments --models --kernel --case is required'),
    (['--case', 'nowhere.yaml'], "cannot read case 'nowhere.yaml'"),
    (['--case', 'c.yaml', '--shape', 'q=1'], 'a --case file names its own kernel, anchors and inputs'),
    (['--kernel', SDPA, '--shape', 'q=1,two'], "bad shape 'q=1,two': expected NAME=D0,D1,...[:DTYPE]"),
    (['--kernel', SDPA, *QKV, '--plot', 'x.png'], '--channels-last, --model-kwargs and --plot apply to --models'),
    (['--kernel', 'torch.nn.functional:nope', *QKV], "module 'torch.nn.functional' has no attribute 'nope'"),
])
def test_bad_arguments_give_one_error_line(cli, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('benchmark.py: error: ')
    for part in (message,) if isinstance(message, str) else message:
        assert part in err[0]
    assert captured.out == ''


def test_script_runs_from_the_shell():
    proc = subprocess.run([sys.executable, str(SCRIPT), '--models', 'zoo_van_b9'], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("benchmark.py: error: unknown model 'zoo_van_b9'")


@pytest.mark.parametrize('case', sorted((ROOT / 'configs' / 'benchmarks' / 'kernels').glob('*/*.yaml')),
                         ids=lambda p: f'{p.parent.name}/{p.stem}')
def test_shipped_kernel_cases_resolve(case, monkeypatch):
    """Every case `make bench-kernels` runs names importable callables and tensor inputs."""
    from zoo import benchmark
    spec = benchmark.load_case(str(case))
    for path in [spec.kernel, *spec.anchors]:
        assert callable(benchmark.resolve_callable(path))
    assert any('shape' in v for v in spec.inputs.values() if isinstance(v, dict))
    assert (spec.device == 'cuda') == case.stem.endswith('_triton')
