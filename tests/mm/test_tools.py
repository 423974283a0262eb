"""tools/train.py and tools/test.py on mmdet/mmseg configs, tools/dist_train.sh with 2 gloo processes, and one clear
error line for each kind of bad input."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.mm.tiny_data import tiny_segmentation_config, write_ade

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parents[2]
UPERNET = 'configs/mmseg/transnext/upernet_transnext-t_8xb2-160k_ade20k-512x512.py'
VIT = dict(_delete_=True, type='ZooBackbone', model_name='vit_tiny_patch16_224', depth=2, dynamic_img_size=True,
           init_cfg=None)


def tool(name: str, *argv, check: bool = True) -> subprocess.CompletedProcess:
    """tools/<name>.py in a process of its own, as a user runs it."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, f'tools/{name}.py', *map(str, argv)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('tools')
    return tiny_segmentation_config(root / 'tiny_upernet.py', str(ROOT / UPERNET), write_ade(root / 'ade'), VIT,
                                    [192] * 4)


def run_error(tool_name: str, argv) -> str:
    result = tool(tool_name, *argv, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'{tool_name}.py: error: '), result.stderr
    return lines[0]


@pytest.mark.parametrize('override,message', [
    ('model.backbone.model_name=zoo_vann_b0', "train.py: error: ZooBackbone: unknown model 'zoo_vann_b0'; did you "
                                              'mean zoo_van_b0'),
    ('model.backbone.out_indices=[0,1,2,5]', 'train.py: error: ZooBackbone: out_indices=(0, 1, 2, 5) for '
                                             'vit_tiny_patch16_224, which has 4 pyramid levels'),
    ('model.backbone.frozen_stages=9', 'train.py: error: ZooBackbone: frozen_stages=9 is out of range for '
                                       'vit_tiny_patch16_224: -1 (nothing), 0 (the stem) to 2'),
])
def test_bad_config_is_one_clear_line(tiny_config, tmp_path, override, message):
    line = run_error('train', [str(tiny_config), '--output', str(tmp_path), '--opt', override])
    assert line.startswith(message), line


def test_missing_config_and_checkpoint(tiny_config, tmp_path):
    assert 'config nowhere.py does not exist' in run_error('train', ['nowhere.py'])
    line = run_error('test', [str(tiny_config), str(tmp_path / 'missing.pth'), '--output', str(tmp_path)])
    assert line == f'test.py: error: checkpoint: {tmp_path / "missing.pth"} does not exist'
    line = run_error('test', ['configs/classification/demo_digits.yaml', 'last.pth'])
    assert 'tools/eval.py --checkpoint last.pth' in line


def test_train_then_test(tiny_config, tmp_path):
    out = tool('train', tiny_config, '--output', tmp_path / 'run', '--opt', 'experiment_name=tools_train').stdout
    assert 'done: mIoU' in out and (tmp_path / 'run' / 'iter_2.pth').is_file()
    out = tool('test', tiny_config, tmp_path / 'run' / 'iter_2.pth', '--output', tmp_path / 'test',
               '--opt', 'experiment_name=tools_test').stdout
    assert out.strip().splitlines()[-1].startswith('mIoU ')


def test_cpu_run_drops_syncbn(monkeypatch):
    """Without CUDA, the heads' SyncBN becomes BN and the authors' whole-model SyncBatchNorm conversion (`sync_bn`, as
    BiFormer's, PlainMamba's and Vim's segmentation configs ask) is left out: SyncBatchNorm needs CUDA."""
    from zoo.mm import runner

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = runner.load_mm_config(ROOT / 'configs/mmseg/biformer/fpn_biformer-s_8xb4-80k_ade20k-512x512.py')
    assert cfg.sync_bn == 'torch' and cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert runner._setup_launcher(cfg) == 'none'
    assert 'sync_bn' not in cfg and cfg.model.decode_head.norm_cfg.type == 'BN'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dist_train_two_gloo_processes(tiny_config, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, MASTER_PORT=str(_free_port()), OMP_NUM_THREADS='1',
               PYTHONPATH=str(ROOT))
    result = subprocess.run(
        ['bash', str(ROOT / 'tools' / 'dist_train.sh'), str(tiny_config), '2', '--output', str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'done: mIoU' in result.stdout
    log = next(tmp_path.glob('*/*.log')).read_text()
    # mmengine's words for the world size; each process validates 1 of the 2 images
    assert 'Distributed launcher: pytorch' in log and 'GPU number: 2' in log and 'Iter(val) [1/1]' in log
    checkpoint = torch.load(tmp_path / 'iter_2.pth', map_location='cpu')
    assert checkpoint['meta']['iter'] == 2
