"""Conventions of the PVTv2 lineage that VAN and TransNeXt inherit: weight init and the checkpoint key layout."""
import math
import re

import torch.nn as nn
from timm.layers import trunc_normal_

__all__ = ['init_pvt_weights', 'rename_pvt_key']


def init_pvt_weights(m: nn.Module):
    """PVTv2's ``_init_weights``: truncated normal (std .02) Linears, He-normal on fan-out (per group) convs, zero
    biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0., math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


def rename_pvt_key(k: str) -> str:
    """A PVTv2-layout key (``patch_embed{1-4}``, ``block{1-4}.{j}``, ``norm{1-4}``, ``head``; the MLP's depthwise conv
    wrapped as ``dwconv.dwconv``) as the zoo's staged models name it (``stem``, ``stages.{i}.downsample``,
    ``stages.{i}.blocks.{j}``, ``stages.{i}.norm``, ``head.fc``)."""
    k = re.sub(r'^patch_embed1\.', 'stem.', k)
    k = re.sub(r'^patch_embed(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.', k)
    k = re.sub(r'^block(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.', k)
    k = re.sub(r'^norm(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.norm.', k)
    k = k.replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.')
    k = re.sub(r'^head\.', 'head.fc.', k)
    return k
