"""Training checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, plain containers and primitives: model, optimizer, scheduler, scaler and
EMA state dicts, the epoch and update count, the config as a plain dict, and every random state a run
consumes (python, numpy, torch CPU and CUDA, the train loader's generator) so that a resumed run continues
exactly where the saved one stopped.
"""
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

__all__ = [
    'rng_state', 'set_rng_state', 'save_training_state', 'load_training_state', 'checkpoint_epoch',
    'remove_unfinished_writes',
]

# what a killed write leaves: save_training_state's temporary files (.<name>.<pid>.tmp) and zoo.hub's partial files
# (.<name>.<hex>.partial)
_UNFINISHED = re.compile(r'^\..+\.(\d+\.tmp|[0-9a-f]+\.partial)$')


def rng_state(generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """Every global random state (and `generator`'s) as tensors and lists."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'python': [version, list(mt_state), gauss],
        'numpy': [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state['generator'] = generator.get_state()
    return state


def set_rng_state(state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
    version, mt_state, gauss = state['python']
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state['numpy']
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    if generator is not None and 'generator' in state:
        generator.set_state(state['generator'])


def save_training_state(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write `state` to `path` through a temporary file in the same folder, so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_training_state(path: Union[str, Path]) -> Dict[str, Any]:
    """A checkpoint written by :func:`save_training_state`, loaded without unpickling any object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    return torch.load(path, map_location='cpu', weights_only=True)


def checkpoint_epoch(path: Union[str, Path]) -> Optional[int]:
    """The epoch a checkpoint holds, or None when there is no readable checkpoint at `path` (memory-mapped: the
    tensors are not read)."""
    try:
        return int(torch.load(path, map_location='cpu', weights_only=True, mmap=True)['epoch'])
    except Exception:  # absent, truncated, not a training checkpoint
        return None


def remove_unfinished_writes(folder: Union[str, Path]) -> List[Path]:
    """Delete the temporary files that writes killed half-way left in `folder`; returns what was removed."""
    folder = Path(folder)
    removed = [p for p in folder.glob('.*') if _UNFINISHED.match(p.name) and p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
