"""zoo.benchmark.cli (tools/benchmark.py's arguments, calls and reports), in process. Nothing asserts on time."""
import csv

import matplotlib.image
import pytest

from zoo.benchmark.cli import main

from .toys import SDPA

TINY_MAMBAOUT = '{"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}'
QKV = ['--shape', 'q=1,2,16,8', '--shape', 'k=1,2,16,8', '--shape', 'v=1,2,16,8']
REF = 'tests.benchmark.toys:reference_attention'


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_models_with_default_anchor_write_every_report(tmp_path, capsys):
    out = {ext: tmp_path / f'bench.{ext}' for ext in ('csv', 'md', 'png')}
    assert main([
        '--models', 'zoo_mambaout_femto', '--model-kwargs', TINY_MAMBAOUT, '--resolutions', '32', '48',
        '--batch-size', '2', '--runs', '2', '--warmup', '1',
        '--csv', str(out['csv']), '--md', str(out['md']), '--plot', str(out['png'])]) == 0
    rows = read_csv(out['csv'])
    assert [(r['name'], r['role'], r['resolution']) for r in rows] == [
        ('zoo_mambaout_femto', 'model', '32'), ('timm:mambaout_femto', 'anchor', '32'),
        ('zoo_mambaout_femto', 'model', '48'), ('timm:mambaout_femto', 'anchor', '48')]
    assert all(float(r['throughput']) > 0 and r['dtype'] == 'fp32' and r['device'] == 'cpu' for r in rows)
    assert 'background_load' not in rows[0]
    md = out['md'].read_text()
    assert md == capsys.readouterr().out
    assert md.count('| zoo_mambaout_femto | model |') == 2 and md.count('| timm:mambaout_femto | anchor |') == 2
    assert matplotlib.image.imread(out['png']).ndim == 3


def test_explicit_and_no_anchors(tmp_path):
    path = tmp_path / 'out.csv'
    common = ['--model-kwargs', TINY_MAMBAOUT, '--resolutions', '32', '--batch-size', '1', '--runs', '1',
              '--warmup', '0', '--csv', str(path)]
    main(['--models', 'zoo_mambaout_femto', '--anchors', 'none', *common])
    assert [r['name'] for r in read_csv(path)] == ['zoo_mambaout_femto']
    main(['--models', 'zoo_mambaout_femto', '--anchor', 'timm:mambaout_femto', 'zoo_mambaout_kobe',
          '--mode', 'train', '--channels-last', *common])
    rows = read_csv(path)
    assert [(r['name'], r['role'], r['mode'], r['channels_last']) for r in rows] == [
        ('zoo_mambaout_femto', 'model', 'train', 'True'), ('timm:mambaout_femto', 'anchor', 'train', 'True'),
        ('zoo_mambaout_kobe', 'anchor', 'train', 'True')]


@pytest.mark.parametrize('mode', ['inference', 'train'])
def test_kernel_sdpa_vs_reference(tmp_path, mode):
    path = tmp_path / 'kernel.csv'
    main(['--kernel', SDPA, '--anchors', REF, *QKV, '--mode', mode, '--runs', '2', '--warmup', '1', '--csv', str(path)])
    rows = read_csv(path)
    assert [(r['name'], r['role'], r['kind'], r['mode']) for r in rows] == [
        (SDPA, 'kernel', 'kernel', mode), (REF, 'anchor', 'kernel', mode)]
    assert all(r['unit'] == 'calls/s' and r['inputs'] == 'q=1x2x16x8 k=1x2x16x8 v=1x2x16x8' for r in rows)
    assert rows[0]['gflops'] and rows[1]['gflops']


def test_kernel_inputs_file(tmp_path):
    spec = tmp_path / 'sdpa.yaml'
    spec.write_text('q: [1, 2, 8, 4]\nk: [1, 2, 8, 4]\nv: [1, 2, 8, 4]\nis_causal: true\n')
    path = tmp_path / 'kernel.csv'
    main(['--kernel', SDPA, '--inputs', str(spec), '--dtype', 'bf16', '--runs', '1', '--csv', str(path)])
    (row,) = read_csv(path)
    assert (row['name'], row['dtype'], row['inputs']) == (SDPA, 'bf16', 'q=1x2x8x4 k=1x2x8x4 v=1x2x8x4')


def write_case(tmp_path):
    case = tmp_path / 'case.yaml'
    case.write_text(f'description: tiny attention\nkernel: {SDPA}\nanchors: [{REF}]\n'
                    'inputs: {q: [1, 2, 8, 4], k: [1, 2, 8, 4], v: [1, 2, 8, 4], scale: 0.5}\n')
    return case


def test_kernel_case_file(tmp_path):
    case = write_case(tmp_path)
    path = tmp_path / 'case.csv'
    main(['--case', str(case), '--runs', '1', '--csv', str(path)])
    rows = read_csv(path)
    assert [(r['name'], r['role'], r['mode']) for r in rows] == [
        (SDPA, 'kernel', 'inference'), (REF, 'anchor', 'inference'),
        (SDPA, 'kernel', 'train'), (REF, 'anchor', 'train')]
    assert all(r['inputs'] == 'q=1x2x8x4 k=1x2x8x4 v=1x2x8x4' and r['device'] == 'cpu' for r in rows)
    case.write_text(case.read_text() + 'modes: [inference]\n')
    main(['--case', str(case), '--runs', '1', '--csv', str(path)])
    assert [r['mode'] for r in read_csv(path)] == ['inference', 'inference']
    main(['--case', str(case), '--mode', 'train', '--runs', '1', '--csv', str(path)])  # the flag wins
    assert [r['mode'] for r in read_csv(path)] == ['train', 'train']


def test_case_compared_idle_and_under_load(tmp_path, capsys):
    case = write_case(tmp_path)
    path, md = tmp_path / 'load.csv', tmp_path / 'load.md'
    assert main(['--case', str(case), '--mode', 'train', '--runs', '1', '--warmup', '0', '--compare-load', '1',
                 '--csv', str(path), '--md', str(md)]) == 0
    rows = read_csv(path)
    assert [(r['name'], r['background_load']) for r in rows] == [(SDPA, '0'), (REF, '0'), (SDPA, '1'), (REF, '1')]
    out = capsys.readouterr().out
    assert out == md.read_text()
    idle, loaded, kept = out.split('### ')[1:]
    assert idle.startswith('idle') and 'background load' not in idle
    assert loaded.startswith('under load') and 'kept 1 thread busy' in loaded
    assert kept.startswith('speed-up kept under load')
    assert f'| {SDPA} | train | q=1x2x8x4 k=1x2x8x4 v=1x2x8x4 | {REF} |' in kept


def test_families_measure_write_and_render(tmp_path, capsys):
    configs, out = tmp_path / 'configs', tmp_path / 'plots'
    configs.mkdir()
    (configs / 'mambaout.yaml').write_text('anchors: ["tests.benchmark.toys:tiny_net"]\n')
    assert main(['--families', 'mambaout', '--family-configs', str(configs), '--out-dir', str(out),
                 '--model-kwargs', TINY_MAMBAOUT, '--resolutions', '32', '64', '--runs', '1', '--warmup', '0']) == 0
    printed = capsys.readouterr().out
    assert '| zoo_mambaout_femto | model | 1x32² |' in printed
    assert '| tests.benchmark.toys:tiny_net | anchor | 1x32² |' in printed
    assert sorted(p.name for p in out.iterdir()) == ['mambaout.png', 'overview.png', 'results.csv']
    rows = read_csv(out / 'results.csv')
    assert [(r['name'], r['resolution'], r['family'], r['batch_size']) for r in rows] == [
        ('zoo_mambaout_femto', '32', 'mambaout', '1'), ('tests.benchmark.toys:tiny_net', '32', 'mambaout', '1'),
        ('zoo_mambaout_femto', '64', 'mambaout', '1'), ('tests.benchmark.toys:tiny_net', '64', 'mambaout', '1')]
    for png in ('mambaout.png', 'overview.png'):
        (out / png).unlink()
    assert main(['--render', str(out / 'results.csv'), '--out-dir', str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['mambaout.png', 'overview.png', 'results.csv']
    assert capsys.readouterr().out.splitlines()[-1] == f'written: {out / "overview.png"}'


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
    (['--models', 'zoo_van_b0', '--out-dir', 'x'], '--family-configs and --out-dir apply to --families and --render '
                                                   'only; drop --out-dir'),
    (['--models', 'zoo_van_b0', '--background-load', '-1'], 'expected a number of threads >= 0'),
    (['--models', 'zoo_van_b0', '--background-load', '1', '--compare-load', '1'], 'not allowed with argument'),
    ([], 'one of the arguments --models --kernel --case --families --render is required'),
    (['--case', 'nowhere.yaml'], "cannot read case 'nowhere.yaml'"),
    (['--case', 'c.yaml', '--shape', 'q=1'], 'a --case file names its own kernel, anchors and inputs'),
    (['--kernel', SDPA, '--shape', 'q=1,two'], "bad shape 'q=1,two': expected NAME=D0,D1,...[:DTYPE]"),
    (['--kernel', SDPA, *QKV, '--plot', 'x.png'], '--channels-last, --model-kwargs and --plot apply to --models'),
    (['--kernel', 'torch.nn.functional:nope', *QKV], "module 'torch.nn.functional' has no attribute 'nope'"),
    (['--kernel', SDPA, *QKV, '--compare-load', '0'], 'a load comparison needs a background load of >= 1 threads'),
    (['--families', 'van', '--anchors', 'timm:resnet18', '--compile'], 'drop --anchors, --compile'),
    (['--families', 'nope'], "unknown family 'nope'; the zoo has"),
    (['--render', 'nowhere.csv'], "cannot read rows 'nowhere.csv'"),
])
def test_bad_arguments_give_one_error_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('benchmark.py: error: ')
    for part in (message,) if isinstance(message, str) else message:
        assert part in err[0]
    assert captured.out == ''
