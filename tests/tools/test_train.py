"""tools/train.py and tools/dist_train.sh end to end, in subprocesses, with tiny models and data."""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.training.checkpoint import load_training_state

from ..training.helpers import TINY_DIGITS_OPTS, make_image_folder

ROOT = Path(__file__).parents[2]
DEMO = 'configs/classification/demo_digits.yaml'


def run_train(*args, env=None, check=True):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    result = subprocess.run(
        [sys.executable, 'tools/train.py', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def steps(output: Path):
    with open(output / 'steps.csv') as f:
        return [row for row in csv.reader(f)]


def test_resume_after_a_kill_continues_exactly(tmp_path):
    # every random source in play: crops (python/torch RNG), mixup (numpy), drop path, shuffling (loader
    # generator), EMA, warmup + cosine over updates, accumulation
    opts = [*TINY_DIGITS_OPTS, 'epochs=4', 'aug.mixup=0.5', 'aug.cutmix=1.0', 'model.kwargs.drop_path_rate=0.1',
            'ema.enabled=true', 'sched.warmup_epochs=1', 'optim.accum_steps=2']
    run_train(DEMO, '--no-progress', '--output', str(tmp_path / 'full'), '--opt', *opts)

    cut = tmp_path / 'cut'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    process = subprocess.Popen(
        [sys.executable, 'tools/train.py', DEMO, '--no-progress', '--output', str(cut), '--opt', *opts],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (cut / 'last.pth').exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        process.kill()  # SIGKILL: no chance to clean up
        process.wait()
    killed_at = load_training_state(cut / 'last.pth')['epoch']
    assert killed_at < 3, 'the run ended before it could be killed'
    run_train(DEMO, '--no-progress', '--output', str(cut), '--resume', '--opt', *opts)
    full, resumed = steps(tmp_path / 'full'), steps(cut)
    assert len(full) == 1 + 4 * 3  # header + 4 epochs of 5 batches in updates of 2, 2, 1
    assert resumed == full  # per-update losses and lrs, as exact decimal reprs
    final_full = load_training_state(tmp_path / 'full' / 'last.pth')
    final_resumed = load_training_state(tmp_path / 'cut' / 'last.pth')
    assert final_resumed['metrics'] == final_full['metrics']
    assert all(final_resumed['ema'][k].equal(v) for k, v in final_full['ema'].items())


@pytest.mark.parametrize('opts, message', [
    (['model.name=zoo_van_b9'], "model.name: 'zoo_van_b9' is not a registered model; zoo models: "),
    (['optim.lrr=0.1'], "unknown config key 'optim.lrr'; allowed keys in optim: name, lr, "),
    (['data.batch_size=big'], "data.batch_size: expected int, got 'big' (str)"),
    (['data.dataset=folder', 'data.root=/nonexistent/imagenet'],
     "data.root: '/nonexistent/imagenet' has no folder 'train' (data.train_split)"),
])
def test_bad_config_is_one_line(opts, message):
    result = run_train(DEMO, '--opt', *opts, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith('train.py: error: ' + message), result.stderr
    assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr


def test_wandb_offline_without_an_account(tmp_path):
    env = {'WANDB_MODE': 'offline', 'WANDB_API_KEY': '', 'WANDB_SILENT': 'true'}
    run_train(DEMO, '--no-progress', '--wandb', '--output', str(tmp_path), '--opt', *TINY_DIGITS_OPTS, 'epochs=1',
              env=env)
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('*.wandb'))


def test_dist_train_two_cpu_processes(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable, 'MASTER_PORT': '29517'}
    root = make_image_folder(tmp_path / 'data', per_class=8)
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', DEMO, '2', '--no-progress', '--output', str(tmp_path / 'out'),
         '--opt', *TINY_DIGITS_OPTS, 'data.dataset=folder', f'data.root={root}', 'data.batch_size=4', 'epochs=2'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_training_state(tmp_path / 'out' / 'last.pth')
    assert checkpoint['epoch'] == 1 and len(checkpoint['rng']) == 2  # one random state per process
    # 24 training images over 2 processes in batches of 4: 3 updates per epoch, logged once (rank 0)
    assert len(steps(tmp_path / 'out')) == 1 + 2 * 3
    assert not any(k.startswith('module.') for k in checkpoint['model'])
