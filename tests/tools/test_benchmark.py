"""tools/benchmark.py from the shell: it runs, writes its reports and reports errors in one line. The
arguments themselves are tested in tests/benchmark/test_cli.py (zoo.benchmark.cli)."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/benchmark.py', *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_script_measures_a_kernel(tmp_path):
    path = tmp_path / 'out.csv'
    proc = run('--kernel', 'torch.nn.functional:scaled_dot_product_attention', '--shape', 'q=1,2,8,4',
               '--shape', 'k=1,2,8,4', '--shape', 'v=1,2,8,4', '--runs', '1', '--warmup', '0', '--csv', str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count('| torch.nn.functional:scaled_dot_product_attention | kernel |') == 1
    assert 'measuring torch.nn.functional:scaled_dot_product_attention' in proc.stderr  # progress goes to stderr
    with open(path) as f:
        assert [r['role'] for r in csv.DictReader(f)] == ['kernel']


def test_script_reports_errors_in_one_line():
    proc = run('--models', 'zoo_van_b9')
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("benchmark.py: error: unknown model 'zoo_van_b9'")
