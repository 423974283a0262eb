import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_check_passes_on_the_committed_cards():
    proc = subprocess.run([sys.executable, 'tools/cards.py', '--check'], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'out of date: none'


def test_unknown_family_is_refused():
    proc = subprocess.run([sys.executable, 'tools/cards.py', 'nope', '--check'], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and 'no facts file for nope' in proc.stderr
