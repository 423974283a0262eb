"""Small models, kernels and clocks the benchmark tests name by import path (tests.benchmark.toys:...)."""
import itertools
from typing import Callable, Optional

import torch
import torch.nn as nn

TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_MAMBAOUT = dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
SDPA = 'torch.nn.functional:scaled_dot_product_attention'


def tiny_net() -> nn.Module:
    """conv 3->4 (3x3, pad 1), pool to 8x8 (no FLOPs counted; identity at 8x8), flatten, linear 256->10."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


class _SizedNet(nn.Module):
    """Refuses inputs of any size but the one it was built for, as timm models with fixed windows do."""

    def __init__(self, img_size: int = 8):
        super().__init__()
        self.img_size = img_size
        self.body = tiny_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.img_size:
            raise ValueError(f'built for {self.img_size}px, got {x.shape[-1]}px')
        return self.body(x)


def sized_net(img_size: int = 8) -> nn.Module:
    return _SizedNet(img_size)


def not_a_model():
    return 'model'


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if is_causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float('-inf'))
    return torch.softmax(scores, dim=-1) @ v


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: Optional[float] = None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def interrupted_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ctrl-C in the middle of a measurement (timed calls run under inference_mode, the harness's set-up does not)."""
    if torch.is_inference_mode_enabled():
        raise KeyboardInterrupt
    return naive_attention(q, k, v)


def fake_clock() -> Callable[[], int]:
    """A timer that advances one second per read: every timed call then lasts exactly one second."""
    return itertools.count().__next__
