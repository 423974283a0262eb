"""mmengine hooks of the zoo (registered in mmengine's root ``HOOKS`` registry under unique names)."""
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

__all__ = ['ZooRandomStateHook']


@HOOKS.register_module()
class ZooRandomStateHook(Hook):
    """Saves the random number generators' states in every checkpoint and restores them when a run resumes, so that
    a resumed run continues exactly as the uninterrupted one would (mmengine itself only re-seeds on resume, so the
    first iterations after it draw different dropout masks, drop paths and RPN/RoI samples).

    The states are restored where the uninterrupted run stood when it saved: before the next epoch's dataloader is
    created (epoch-based loops), or before the next iteration, once mmengine has skipped the batches already trained
    on (iteration-based loops). They are stored as tensors and plain tuples, which torch's safe loader reads
    without any allow-list. Data transforms that draw random numbers in the main process (``num_workers=0``) are
    the one thing it cannot replay; with worker processes, mmengine seeds those deterministically.
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint['zoo_random_state'] = dict(
            torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            numpy=(kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            python=random.getstate(),
        )

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False) and 'zoo_random_state' in checkpoint:
            self._pending = checkpoint['zoo_random_state']

    def before_train_epoch(self, runner) -> None:
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            self._restore()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state['torch'])
        if state['cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
        kind, keys, pos, has_gauss, gauss = state['numpy']
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state['python'])
