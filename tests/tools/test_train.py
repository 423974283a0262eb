"""tools/train.py and tools/dist_train.sh end to end, in subprocesses, with tiny models and data."""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm

import zoo  # noqa: F401  (registers the zoo models with timm)
from zoo.training.checkpoint import load_training_state, save_training_state
from zoo.training.evaluator import EvalJob, run_evaluation

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


# A training process (what tools/train.py runs), killed (SIGKILL) the moment it starts writing best.pth after an
# improvement at epoch >= 1: last.pth is already written, best.pth's temporary file is half-way
KILLED_BETWEEN_WRITES = """
import io, os, signal, sys
from pathlib import Path

import torch
import zoo.training.trainer as trainer
from zoo.training import load_config, train

real_save = trainer.save_training_state


def save(state, path):
    path = Path(path)
    if path.name == 'best.pth' and state['epoch'] >= 1:
        data = io.BytesIO()
        torch.save(state, data)
        path.with_name(f'.{path.name}.{os.getpid()}.tmp').write_bytes(data.getvalue()[: data.tell() // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, path)


trainer.save_training_state = save
config, output, *overrides = sys.argv[1:]
train(load_config(config, [*overrides, f'output={output}', 'log.progress=false']))
"""


def test_kill_between_last_and_best_is_repaired_on_resume(tmp_path):
    """Before, best.pth stayed at an older epoch than the one last.pth recorded as the best, and a resume never
    repaired it; the half-written temporary file stayed too."""
    child = tmp_path / 'killed_train.py'
    child.write_text(KILLED_BETWEEN_WRITES)
    out = tmp_path / 'out'
    opts = [*TINY_DIGITS_OPTS, 'epochs=4']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    killed = subprocess.run([sys.executable, str(child), DEMO, str(out), *opts],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = load_training_state(out / 'last.pth')
    assert last['epoch'] >= 1 and last['metrics']['top1'] == last['best_top1']  # the best so far: best.pth was next
    stale = load_training_state(out / 'best.pth')['epoch']
    assert stale < last['epoch']  # the inconsistent pair the kill left
    orphans = list(out.glob('.best.pth.*.tmp'))
    assert len(orphans) == 1

    resumed = run_train(DEMO, '--no-progress', '--output', str(out), '--resume', '--opt', *opts)
    assert f'Removed what killed writes left in {out}: {orphans[0].name}' in resumed.stderr
    assert f'best.pth held epoch {stale}, but the best top-1 ' in resumed.stderr
    assert f'is epoch {last["epoch"]}, which {out / "last.pth"} holds' in resumed.stderr
    assert 'rewrote best.pth from it' in resumed.stderr
    assert not list(out.glob('.*.tmp'))
    final, best = load_training_state(out / 'last.pth'), load_training_state(out / 'best.pth')
    assert final['epoch'] == 3
    assert best['metrics']['top1'] == final['best_top1'] and best['epoch'] == final['best_epoch']


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


def test_resume_with_another_model_is_one_line(tmp_path):
    """Before: a 151-line traceback from load_state_dict."""
    weights = timm.create_model('zoo_van_b0', num_classes=10).state_dict()
    save_training_state({'epoch': 0, 'num_updates': 1, 'arch': 'zoo_van_b0', 'model': weights,
                         'config': {'model': {'name': 'zoo_van_b0'}}}, tmp_path / 'last.pth')
    result = run_train(DEMO, '--output', str(tmp_path), '--resume', '--opt', 'model.name=zoo_van_b1', check=False)
    assert result.returncode == 2
    assert result.stderr == (f"train.py: error: model.name: 'zoo_van_b1', but checkpoint {tmp_path / 'last.pth'} was "
                             f"trained with 'zoo_van_b0'; resume with model.name=zoo_van_b0, or start a new run "
                             f"without --resume\n")


def test_wandb_offline_without_an_account(tmp_path):
    env = {'WANDB_MODE': 'offline', 'WANDB_API_KEY': '', 'WANDB_SILENT': 'true'}
    run_train(DEMO, '--no-progress', '--wandb', '--output', str(tmp_path), '--opt', *TINY_DIGITS_OPTS, 'epochs=1',
              env=env)
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('*.wandb'))


def test_dist_train_two_cpu_processes(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable, 'MASTER_PORT': '29517'}
    root = make_image_folder(tmp_path / 'data', per_class=8)
    (root / 'val' / 'red' / '0.png').unlink()  # 23 validation images: 12 + 11 over two processes
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
    # DDP evaluation gives the single-process figures: every image counted once (before, the sampler padded 23
    # images to 24) with the same BatchNorm statistics on both processes (averaged, then saved)
    single = run_evaluation(EvalJob(checkpoint=str(tmp_path / 'out' / 'last.pth'), device='cpu')).metrics
    assert single['count'] == 23
    assert checkpoint['metrics']['top1'] == pytest.approx(single['top1'], abs=1e-9)
    assert checkpoint['metrics']['loss'] == pytest.approx(single['loss'], rel=1e-5)
