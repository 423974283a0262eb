import argparse
import random

import numpy as np
import pytest
import torch

from zoo.training.checkpoint import (
    checkpoint_epoch,
    load_training_state,
    remove_unfinished_writes,
    rng_state,
    save_training_state,
    set_rng_state,
)


def _draw(generator):
    return (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    generator = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_training_state({'rng': rng_state(generator)}, tmp_path / 'rng.pth')
    expected = _draw(generator)
    _draw(generator)
    set_rng_state(load_training_state(tmp_path / 'rng.pth')['rng'], generator)
    assert _draw(generator) == expected


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth'
    save_training_state({'epoch': 0, 'w': torch.ones(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']

    def failing_save(obj, f):
        f.write(b'half a checkpoint')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        save_training_state({'epoch': 1, 'w': torch.zeros(2)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']  # no temporary file left behind
    assert load_training_state(path)['epoch'] == 0


def test_load_refuses_pickled_objects(tmp_path):
    torch.save({'args': argparse.Namespace(lr=0.1)}, tmp_path / 'unsafe.pth')
    with pytest.raises(Exception, match='weights_only'):
        load_training_state(tmp_path / 'unsafe.pth')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_training_state(tmp_path / 'missing.pth')


def test_unfinished_writes_are_removed_and_nothing_else(tmp_path):
    names = ['.last.pth.4242.tmp', '.best.pth.17.tmp', '.weights.safetensors.0a1b2c3d.partial',  # killed writes
             'last.pth', 'notes.tmp', '.gitignore', '.hidden.tmp', 'x.partial']  # anything else stays
    for name in names:
        (tmp_path / name).write_bytes(b'x')
    removed = remove_unfinished_writes(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


def test_checkpoint_epoch(tmp_path):
    save_training_state({'epoch': 7, 'model': {'w': torch.ones(3)}}, tmp_path / 'best.pth')
    assert checkpoint_epoch(tmp_path / 'best.pth') == 7
    assert checkpoint_epoch(tmp_path / 'absent.pth') is None
    (tmp_path / 'half.pth').write_bytes((tmp_path / 'best.pth').read_bytes()[:100])
    assert checkpoint_epoch(tmp_path / 'half.pth') is None
