"""tools/eval.py end to end, in subprocesses."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoo.training.config import ModelConfig, load_config
from zoo.training.data import create_eval_transform, model_data_config
from zoo.training.trainer import create_model_from_config, train

from ..training.helpers import TINY_DIGITS_OPTS, TINY_VAN, make_image_folder

ROOT = Path(__file__).parents[2]


def run_eval(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(
        [sys.executable, 'tools/eval.py', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_eval_a_training_checkpoint_on_its_digits_split(tmp_path):
    train(load_config(None, [*TINY_DIGITS_OPTS, 'epochs=1', f'output={tmp_path}', 'log.progress=false']))
    result = run_eval('--checkpoint', str(tmp_path / 'last.pth'), '--features', str(tmp_path / 'f.npz'))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == 'zoo_van_b0 on 1618 digits held-out images at (3, 16, 16)'
    top1 = float(lines[1].split()[1].rstrip('%'))
    expected = torch.load(tmp_path / 'last.pth', weights_only=True)['metrics']['top1']
    assert abs(top1 - expected) < 0.01  # the run's own held-out evaluation
    assert lines[2].startswith('per-class recall (lowest first): ')
    assert lines[3].startswith('most confused (true -> predicted): ')
    assert lines[4].startswith('throughput: ') and 'images/s' in lines[4]
    with np.load(tmp_path / 'f.npz') as saved:
        assert saved['features'].shape == (1618, 32) and saved['targets'].shape == (1618,)


def test_eval_weights_on_an_image_folder_with_features(tmp_path):
    root = make_image_folder(tmp_path / 'data')
    torch.manual_seed(0)
    model = create_model_from_config(ModelConfig(name='zoo_van_b0', kwargs=TINY_VAN), num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / 'weights.pth')
    kwargs = '{embed_dims: [8, 16, 24, 32], depths: [1, 1, 1, 1], mlp_ratios: [2, 2, 2, 2], num_classes: 3}'
    result = run_eval('--model', 'zoo_van_b0', '--checkpoint', str(tmp_path / 'weights.pth'), '--model-kwargs',
                      kwargs, '--data-dir', str(root), '--image-size', '16', '--features', str(tmp_path / 'f.pt'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith('zoo_van_b0 on 12 folder val images at (3, 16, 16)')
    saved = torch.load(tmp_path / 'f.pt', weights_only=True)
    assert saved['classes'] == ['blue', 'green', 'red'] and saved['targets'].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # the pooled features of the first image, computed here with the model's pretrained-cfg transforms
    transform = create_eval_transform(model_data_config(model, 16))
    image = transform(Image.open(root / 'val' / 'blue' / '0.png').convert('RGB'))
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(image[None]), pre_logits=True)[0]
    torch.testing.assert_close(saved['features'][0], expected, rtol=1e-4, atol=1e-5)


def test_eval_errors_are_one_line(tmp_path):
    for args, message in [
        ([], '--model: give a model name'),
        (['--model', 'zoo_van_b0', '--data-dir', str(tmp_path)], f"--data-dir: '{tmp_path}' has no folder 'val'"),
        (['--model', 'zoo_nope', '--digits'], "--model: 'zoo_nope' is not a registered model"),
        (['--model', 'zoo_van_b0', '--digits', '--batch-size', '0'], '--batch-size: must be >= 1, got 0'),
        (['--model', 'zoo_van_b0', '--digits', '--image-size', '0'], '--image-size: must be >= 1, got 0'),
        (['--model', 'zoo_van_b0', '--digits', '--checkpoint', str(tmp_path)], f'Weights file {tmp_path} is a '
                                                                              'directory'),
    ]:
        result = run_eval(*args)
        assert result.returncode == 2
        assert result.stderr.startswith('eval.py: error: ' + message), result.stderr
        assert result.stderr.count('\n') == 1
