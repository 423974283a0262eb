"""DaViT: Dual Attention Vision Transformers.

Paper: `DaViT: Dual Attention Vision Transformers` - https://arxiv.org/abs/2204.03645 (arXiv:2204.03645)
Original code: https://github.com/dingmyu/davit (MIT; classification model in ``timm/models/davit.py``)
Weights: the authors' ImageNet-1k release (DaViT-T/S/B, Google Drive), as hosted by timm on the Hugging Face hub
(``timm/davit_{tiny,small,base}.msft_in1k``, Apache-2.0). Large, huge and giant are configurations without weights.

Four stages at strides 4/8/16/32; every block is a spatial block (window self-attention over 7x7 windows) followed
by a channel block (attention between channel groups across all tokens), each with a depthwise-conv position
encoding before the attention and before the MLP. timm implements the architecture (``timm.models.davit``); the
zoo builds timm's model and changes one thing: the spatial attention runs through the fused
``kernels.window.window_attention`` op, which pads a feature map that is not a multiple of the window and masks
the padded keys out of the softmax. timm (and the original) pad with zeros and let every query attend to the padded
tokens too, so the two agree exactly when every stage's feature map is a multiple of the window (224x224 input with
7x7 windows) and differ elsewhere, where ours attends to the real tokens only.

The state dict is timm's, so timm's hosted weights load unchanged; ``checkpoint_filter_fn`` also maps the original
repository's checkpoints (``patch_embeds.*``, ``main_blocks.*``, ``norms.*``, ``head.*``).
"""
import re
from typing import Dict, Set

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import davit as _timm_davit
from timm.models import generate_default_cfgs, register_model

from kernels import window_attention
from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import pad_bottom_right, pad_to_multiple

__all__ = ['DaViT']


class Stem(_timm_davit.Stem):
    """timm's stem (conv + norm after padding to the stride) with the padding as :func:`pad_to_multiple` (the same
    amounts; a form that keeps torch.export with dynamic sizes fast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x = pad_bottom_right(x, pad_to_multiple(H, self.stride[0]), pad_to_multiple(W, self.stride[1]))
        return self.norm(self.conv(x))


class Downsample(_timm_davit.Downsample):
    """timm's downsampling (norm, then a strided conv after padding to an even kernel) with the padding as
    :func:`pad_to_multiple`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x = self.norm(x)
        if self.even_k:
            k_h, k_w = self.conv.kernel_size
            x = pad_bottom_right(x, pad_to_multiple(H, k_h), pad_to_multiple(W, k_w))
        return self.conv(x)


class WindowAttention(_timm_davit.WindowAttention):
    """timm's window attention (same ``qkv`` / ``proj`` parameters) on a whole (B, H, W, C) map: the window
    partition, padding and masking happen inside the fused op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        # (B, H, W, 3 * C) -> 3 x (B, heads, H, W, head_dim); qkv channels are ordered (3, heads, head_dim)
        q, k, v = self.qkv(x).view(B, H, W, 3, self.num_heads, C // self.num_heads).permute(3, 0, 4, 1, 2, 5)
        x = window_attention(q, k, v, self.window_size, scale=self.scale)
        return self.proj(x.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))


class SpatialBlock(_timm_davit.SpatialBlock):
    """timm's spatial block, with the window attention on the whole map (no zero-padded keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        shortcut = self.cpe1(x).flatten(2).transpose(1, 2)
        x = self.attn(self.norm1(shortcut).view(B, H, W, C))
        x = shortcut + self.drop_path1(x.reshape(B, H * W, C))
        x = self.cpe2(x.transpose(1, 2).view(B, C, H, W))
        if self.mlp is not None:
            x = x.flatten(2).transpose(1, 2)
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
            x = x.transpose(1, 2).view(B, C, H, W)
        return x


class DaViT(_timm_davit.DaVit):
    """timm's DaVit with its spatial attention through the fused window-attention kernel.

    Takes timm's arguments (``depths``, ``embed_dims``, ``num_heads``, ``window_size``, ``mlp_ratio``, ...).
    Any input size works: the stem and downsampling layers pad to their stride, the window attention pads to the
    window and ignores the padding.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # timm's stage builds timm's blocks; ours add no parameters or buffers, only a different forward, so the
        # blocks are re-classed in place (same modules, same initialization, same state dict).
        for module in self.modules():
            if type(module) is _timm_davit.SpatialBlock:
                module.__class__ = SpatialBlock
                module.attn.__class__ = WindowAttention
            elif type(module) is _timm_davit.Stem:
                module.__class__ = Stem
            elif type(module) is _timm_davit.Downsample:
                module.__class__ = Downsample

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # nothing beyond the norms and biases that timm's optimizer factory already exempts (all 1-D)
        return set()


def _rename_original_key(k: str) -> str:
    k = re.sub(r'^patch_embeds\.0\.proj\.', 'stem.conv.', k)
    k = re.sub(r'^patch_embeds\.0\.norm\.', 'stem.norm.', k)
    k = re.sub(r'^patch_embeds\.(\d+)\.proj\.', r'stages.\1.downsample.conv.', k)
    k = re.sub(r'^patch_embeds\.(\d+)\.norm\.', r'stages.\1.downsample.norm.', k)
    k = re.sub(r'^main_blocks\.(\d+)\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.\3.', k)
    k = re.sub(r'\.cpe\.([01])\.', lambda m: f'.cpe{int(m[1]) + 1}.', k)
    k = re.sub(r'^norms\.', 'head.norm.', k)
    k = re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: DaViT) -> Dict[str, torch.Tensor]:
    """Map a checkpoint of the original repository onto this model's (timm's) keys.

    The original (dingmyu/davit ``timm/models/davit.py``, saved by timm's training script: the weights under
    ``state_dict``, or flat) names ``patch_embeds.{i}.{proj,norm}`` (the stem for i = 0, else stage i's
    downsample), ``main_blocks.{stage}.{block}.{0: spatial, 1: channel}.{cpe.0, cpe.1, norm1, attn, norm2, mlp}``,
    ``norms`` (the head's norm) and ``head``. A state dict in timm's format (``stem.conv.weight``) passes
    through unchanged.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.conv.weight' in state_dict:
        return state_dict
    return {_rename_original_key(k): v for k, v in state_dict.items()}


def _create_davit(variant: str, pretrained: bool = False, **kwargs) -> DaViT:
    return build_model_with_cfg(
        DaViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.95, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2204.03645',
        'paper_name': 'DaViT: Dual Attention Vision Transformers',
        'origin_url': 'https://github.com/dingmyu/davit',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # the authors' ImageNet-1k weights, converted to timm's layout and hosted by timm
    'zoo_davit_tiny.msft_in1k': _cfg(hf_hub_id='timm/davit_tiny.msft_in1k'),
    'zoo_davit_small.msft_in1k': _cfg(hf_hub_id='timm/davit_small.msft_in1k'),
    'zoo_davit_base.msft_in1k': _cfg(hf_hub_id='timm/davit_base.msft_in1k'),
    # configurations of the paper's scaling study; no released weights
    'zoo_davit_large': _cfg(),
    'zoo_davit_huge': _cfg(),
    'zoo_davit_giant': _cfg(),
})


@register_model
def zoo_davit_tiny(pretrained: bool = False, **kwargs) -> DaViT:
    model_args = dict(depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_davit('zoo_davit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_davit_small(pretrained: bool = False, **kwargs) -> DaViT:
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_davit('zoo_davit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_davit_base(pretrained: bool = False, **kwargs) -> DaViT:
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
    return _create_davit('zoo_davit_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_davit_large(pretrained: bool = False, **kwargs) -> DaViT:
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(192, 384, 768, 1536), num_heads=(6, 12, 24, 48))
    return _create_davit('zoo_davit_large', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_davit_huge(pretrained: bool = False, **kwargs) -> DaViT:
    model_args = dict(depths=(1, 1, 9, 1), embed_dims=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64))
    return _create_davit('zoo_davit_huge', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_davit_giant(pretrained: bool = False, **kwargs) -> DaViT:
    model_args = dict(depths=(1, 1, 12, 3), embed_dims=(384, 768, 1536, 3072), num_heads=(12, 24, 48, 96))
    return _create_davit('zoo_davit_giant', pretrained=pretrained, **dict(model_args, **kwargs))
