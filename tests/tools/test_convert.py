import json
import subprocess
import sys
from pathlib import Path

from tests.parity import load_parity_fixture
from zoo.hub import file_sha256

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'convert.py'), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_converts_and_prints_sha256(tmp_path):
    fixture = load_parity_fixture('van_parity')
    original = fixture.save_original_checkpoint(tmp_path / 'van.pth.tar')
    out = tmp_path / 'van.safetensors'
    proc = run(fixture.model_name, original, '-o', out, '--model-kwargs', json.dumps(fixture.model_kwargs))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:3] == [str(out), 'sha256', file_sha256(out)]


def test_cli_refusal_is_one_line(tmp_path):
    missing = tmp_path / 'absent.pth'
    proc = run('zoo_van_b0', missing, '-o', tmp_path / 'x.safetensors')
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0 and 'absent.pth does not exist' in proc.stderr


def test_cli_output_that_is_a_directory_is_one_line(tmp_path):
    """Before: a traceback (IsADirectoryError from the final rename)."""
    fixture = load_parity_fixture('van_parity')
    original = fixture.save_original_checkpoint(tmp_path / 'van.pth.tar')
    proc = run(fixture.model_name, original, '-o', tmp_path, '--model-kwargs', json.dumps(fixture.model_kwargs))
    assert proc.returncode == 2
    assert proc.stderr == (f'error: -o/--output: {tmp_path} is a directory; give the file to write '
                           f'(e.g. {tmp_path / "weights.safetensors"}), or --mirror {tmp_path} for a mirror\n')
    assert [p.name for p in tmp_path.iterdir()] == ['van.pth.tar']
