"""MaxViT: Multi-Axis Vision Transformer (the ``_tf`` family, TensorFlow-ported weights).

Paper: `MaxViT: Multi-Axis Vision Transformer` - https://arxiv.org/abs/2204.01697 (arXiv:2204.01697)
Original code: https://github.com/google-research/maxvit (TensorFlow, Apache-2.0)
PyTorch reference: timm's ``timm/models/maxxvit.py`` (its ``maxvit_*_tf_*`` models, ported from the TensorFlow
checkpoints); weights: timm's hosted copies of the official ImageNet-1k and ImageNet-21k checkpoints
(``timm/maxvit_*_tf_*.in1k``, ``.in21k``, ``.in21k_ft_in1k``), Apache-2.0.

A conv stem (stride 2), then four stages of MaxViT blocks: an MBConv (stride 2 in a stage's first block), block
attention (non-overlapping windows) and grid attention (a dilated grid of the same size over the whole map), each
attention with a TensorFlow-style relative position bias and followed by an MLP. The zoo builds timm's
``MaxxVit`` from timm's own configs and blocks and changes one thing: block and grid attention run through the
fused ``kernels.window.window_attention`` op, which pads a map that is not a multiple of the window or grid, masks
the padded keys out of the softmax and crops back. timm asserts divisibility instead, so timm's
``maxvit_tiny_tf_224`` takes 224x224 (feature maps 56/28/14/7) but not e.g. 256x256 or 800x1216; the zoo model
takes any size and equals timm wherever timm accepts the size.

The window (= grid) size is a construction argument: ``img_size // 32`` by default, as in timm (7 at 224, 12 at
384, 16 at 512), or ``window_size=...``. ``checkpoint_filter_fn`` resizes the relative position bias tables when a
checkpoint was trained with another window.

Differences to timm's registration: ``features_only`` gives the four stage outputs (strides 4/8/16/32, NCHW) and
``feature_info`` lists those four (timm also lists the stride-2 stem); ``fixed_input_size`` is off.
"""
from typing import Any, Dict, Optional, Set, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import RelPosBiasTf, to_2tuple
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import get_same_padding
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from timm.models import generate_default_cfgs, register_model
from timm.models import maxxvit as _timm_maxxvit

from kernels import window_attention
from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import StagedFeaturesMixin

__all__ = ['MaxViT']


def _pad_same(x: torch.Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int],
              dilation: Tuple[int, int] = (1, 1), value: float = 0.) -> torch.Tensor:
    """timm's ``pad_same`` (TensorFlow 'SAME' padding) with each amount written as ``((size + stride - 1) // stride
    - 1) * stride + extent - size``. That equals timm's ``max((ceil(size / stride) - 1) * stride + extent - size, 0)``
    wherever the kernel's extent is at least its stride (every padded conv and pool of MaxViT), and the output size
    becomes ``(size + stride - 1) // stride``, a form symbolic shapes simplify: timm's max and ceil nest through every
    stride-2 layer, and under torch.export with dynamic sizes the expressions grow until the export stalls."""
    H, W = x.shape[-2:]
    pads = []
    for size, k, s, d in ((H, kernel_size[0], stride[0], dilation[0]), (W, kernel_size[1], stride[1], dilation[1])):
        extent = (k - 1) * d + 1
        pads.append(((size + s - 1) // s - 1) * s + extent - size if extent >= s else get_same_padding(size, k, s, d))
    pad_h, pad_w = pads
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=value)


class _Conv2dSame(Conv2dSame):
    """timm's ``Conv2dSame`` with :func:`_pad_same` (same parameters, same outputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class _AvgPool2dSame(AvgPool2dSame):
    """timm's ``AvgPool2dSame`` with :func:`_pad_same`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel_size, self.stride)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)


class _MaxPool2dSame(MaxPool2dSame):
    """timm's ``MaxPool2dSame`` with :func:`_pad_same`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel_size, self.stride, self.dilation, value=-float('inf'))
        return F.max_pool2d(x, self.kernel_size, self.stride, (0, 0), self.dilation, self.ceil_mode)


_SAME_PADDED = {Conv2dSame: _Conv2dSame, AvgPool2dSame: _AvgPool2dSame, MaxPool2dSame: _MaxPool2dSame}


class PartitionAttention(_timm_maxxvit.PartitionAttentionCl):
    """timm's channels-last block/grid attention + MLP, the attention on the whole (B, H, W, C) map through the
    fused op (same parameters: ``attn.qkv``, ``attn.rel_pos.relative_position_bias_table``, ``attn.proj``)."""

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        B, H, W, _ = x.shape
        heads, dim_head = attn.num_heads, attn.dim_head
        qkv = attn.qkv(x)
        if attn.head_first:  # channels ordered (heads, 3, dim_head)
            q, k, v = qkv.view(B, H, W, heads, 3, dim_head).permute(4, 0, 3, 1, 2, 5)
        else:  # (3, heads, dim_head), the TensorFlow layout of the _tf models
            q, k, v = qkv.view(B, H, W, 3, heads, dim_head).permute(3, 0, 4, 1, 2, 5)
        bias = attn.rel_pos.relative_position_bias_table if attn.rel_pos is not None else None
        x = window_attention(
            q, k, v, self.partition_size, grid=not self.partition_block, rel_pos_bias=bias, scale=attn.scale)
        x = x.permute(0, 2, 3, 1, 4).reshape(B, H, W, heads * dim_head)
        return attn.proj_drop(attn.proj(x))


class MaxViT(StagedFeaturesMixin, _timm_maxxvit.MaxxVit):
    """timm's MaxxVit (MaxViT ``_tf`` configs) with block and grid attention through the fused window kernel.

    Args:
        cfg: timm's model config (``timm.models.maxxvit.model_cfgs['maxvit_tiny_tf']``, ...); its transformer must
            use channels-last attention and either no relative position or the TensorFlow-style bias table.
        img_size: The input size the window is derived from (``img_size // 32``); inputs of any size work.
        window_size: The block window and grid size, overriding ``img_size // 32``.
        **kwargs: timm's MaxxVit arguments (``in_chans``, ``num_classes``, ``global_pool``, ``drop_rate``,
            ``drop_path_rate``, ``transformer_*`` / ``conv_*`` overlays onto the config).
    """

    def __init__(
            self,
            cfg: _timm_maxxvit.MaxxVitCfg,
            img_size: Union[int, Tuple[int, int]] = 224,
            window_size: Optional[Union[int, Tuple[int, int]]] = None,
            **kwargs: Any,
    ):
        if window_size is not None:
            kwargs.update(transformer_window_size=to_2tuple(window_size), transformer_grid_size=to_2tuple(window_size))
        super().__init__(cfg, img_size=img_size, **kwargs)
        for module in self.modules():
            if isinstance(module, _timm_maxxvit.PartitionAttention2d):
                raise ValueError('MaxViT runs channels-last partition attention; the config sets use_nchw_attn')
            if isinstance(module, _timm_maxxvit.AttentionCl):
                if module.rel_pos is not None and not isinstance(module.rel_pos, RelPosBiasTf):
                    raise ValueError(f'the window kernel takes a TensorFlow-style bias table (rel_pos_type '
                                     f"'bias_tf'), got {type(module.rel_pos).__name__}")
                if module.attn_drop.p > 0:
                    raise ValueError(f'the window kernel has no attention dropout, got attn_drop={module.attn_drop.p}')
            # timm's blocks build timm's partition attention; ours adds no parameters or buffers, only a different
            # forward, so it is re-classed in place (same modules, initialization and state dict)
            if type(module) is _timm_maxxvit.PartitionAttentionCl:
                module.__class__ = PartitionAttention
            # likewise timm's TensorFlow 'SAME' padded convs and pools (see _pad_same)
            if type(module) in _SAME_PADDED:
                module.__class__ = _SAME_PADDED[type(module)]
        # the four stages are the feature levels (strides 4..32); timm also lists the stride-2 stem
        self.feature_info = [info for info in self.feature_info if info['module'].startswith('stages.')]

    @property
    def window_size(self) -> Tuple[int, int]:
        return tuple(self.stages[0].blocks[0].attn_grid.partition_size)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith('relative_position_bias_table')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    def reset_head_for_features(self):
        self.reset_classifier(0, '', reset_other=True)  # the _tf models' head norm and pre-logits go with the head


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MaxViT) -> Dict[str, torch.Tensor]:
    """timm's MaxxVit checkpoints (the hosted ``timm/maxvit_*_tf_*`` weights), optionally nested under
    ``state_dict`` or ``model``. Relative position bias tables trained with another window are resized to the
    model's window (timm's ``resize_rel_pos_bias_table``); 1x1 conv and linear weights are reshaped into each
    other where the layouts differ."""
    state_dict = unwrap_state_dict(state_dict)
    return _timm_maxxvit.checkpoint_filter_fn(state_dict, model)


def _create_maxvit(variant: str, pretrained: bool = False, **kwargs) -> MaxViT:
    cfg_variant = variant[len('zoo_'):].rsplit('_', 1)[0]  # zoo_maxvit_tiny_tf_224 -> timm's maxvit_tiny_tf config
    return build_model_with_cfg(
        MaxViT,
        variant,
        pretrained,
        model_cfg=_timm_maxxvit.model_cfgs[cfg_variant],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(size: int = 224, **kwargs) -> Dict:
    cfg = {
        'num_classes': 1000, 'input_size': (3, size, size), 'pool_size': (size // 32, size // 32),
        'crop_pct': 0.95, 'interpolation': 'bicubic',
        'mean': IMAGENET_INCEPTION_MEAN, 'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2204.01697',
        'paper_name': 'MaxViT: Multi-Axis Vision Transformer',
        'origin_url': 'https://github.com/google-research/maxvit',
    }
    if size > 224:  # timm's cfgs of the fine-tuned high-resolution checkpoints
        cfg.update(crop_pct=1.0, crop_mode='squash')
    return dict(cfg, **kwargs)


def _hosted(name: str, size: int, **kwargs) -> Dict:
    return _cfg(size, hf_hub_id=f'timm/{name}', **kwargs)


_IN1K_224 = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)  # timm's cfg of the 224 in1k weights

default_cfgs = generate_default_cfgs({
    'zoo_maxvit_tiny_tf_224.in1k': _hosted('maxvit_tiny_tf_224.in1k', 224, **_IN1K_224),
    'zoo_maxvit_tiny_tf_384.in1k': _hosted('maxvit_tiny_tf_384.in1k', 384),
    'zoo_maxvit_tiny_tf_512.in1k': _hosted('maxvit_tiny_tf_512.in1k', 512),
    'zoo_maxvit_small_tf_224.in1k': _hosted('maxvit_small_tf_224.in1k', 224, **_IN1K_224),
    'zoo_maxvit_small_tf_384.in1k': _hosted('maxvit_small_tf_384.in1k', 384),
    'zoo_maxvit_small_tf_512.in1k': _hosted('maxvit_small_tf_512.in1k', 512),
    'zoo_maxvit_base_tf_224.in1k': _hosted('maxvit_base_tf_224.in1k', 224, **_IN1K_224),
    'zoo_maxvit_base_tf_384.in1k': _hosted('maxvit_base_tf_384.in1k', 384),
    'zoo_maxvit_base_tf_512.in1k': _hosted('maxvit_base_tf_512.in1k', 512),
    'zoo_maxvit_large_tf_224.in1k': _hosted('maxvit_large_tf_224.in1k', 224, **_IN1K_224),
    'zoo_maxvit_large_tf_384.in1k': _hosted('maxvit_large_tf_384.in1k', 384),
    'zoo_maxvit_large_tf_512.in1k': _hosted('maxvit_large_tf_512.in1k', 512),

    'zoo_maxvit_base_tf_224.in21k': _hosted('maxvit_base_tf_224.in21k', 224, num_classes=21843),
    'zoo_maxvit_base_tf_384.in21k_ft_in1k': _hosted('maxvit_base_tf_384.in21k_ft_in1k', 384),
    'zoo_maxvit_base_tf_512.in21k_ft_in1k': _hosted('maxvit_base_tf_512.in21k_ft_in1k', 512),
    'zoo_maxvit_large_tf_224.in21k': _hosted('maxvit_large_tf_224.in21k', 224, num_classes=21843),
    'zoo_maxvit_large_tf_384.in21k_ft_in1k': _hosted('maxvit_large_tf_384.in21k_ft_in1k', 384),
    'zoo_maxvit_large_tf_512.in21k_ft_in1k': _hosted('maxvit_large_tf_512.in21k_ft_in1k', 512),
    'zoo_maxvit_xlarge_tf_224.in21k': _hosted('maxvit_xlarge_tf_224.in21k', 224, num_classes=21843),
    'zoo_maxvit_xlarge_tf_384.in21k_ft_in1k': _hosted('maxvit_xlarge_tf_384.in21k_ft_in1k', 384),
    'zoo_maxvit_xlarge_tf_512.in21k_ft_in1k': _hosted('maxvit_xlarge_tf_512.in21k_ft_in1k', 512),
})


@register_model
def zoo_maxvit_tiny_tf_224(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=224)
    return _create_maxvit('zoo_maxvit_tiny_tf_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_tiny_tf_384(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=384)
    return _create_maxvit('zoo_maxvit_tiny_tf_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_tiny_tf_512(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=512)
    return _create_maxvit('zoo_maxvit_tiny_tf_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_small_tf_224(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=224)
    return _create_maxvit('zoo_maxvit_small_tf_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_small_tf_384(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=384)
    return _create_maxvit('zoo_maxvit_small_tf_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_small_tf_512(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=512)
    return _create_maxvit('zoo_maxvit_small_tf_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_base_tf_224(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=224)
    return _create_maxvit('zoo_maxvit_base_tf_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_base_tf_384(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=384)
    return _create_maxvit('zoo_maxvit_base_tf_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_base_tf_512(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=512)
    return _create_maxvit('zoo_maxvit_base_tf_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_large_tf_224(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=224)
    return _create_maxvit('zoo_maxvit_large_tf_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_large_tf_384(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=384)
    return _create_maxvit('zoo_maxvit_large_tf_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_large_tf_512(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=512)
    return _create_maxvit('zoo_maxvit_large_tf_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_xlarge_tf_224(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=224)
    return _create_maxvit('zoo_maxvit_xlarge_tf_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_xlarge_tf_384(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=384)
    return _create_maxvit('zoo_maxvit_xlarge_tf_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_maxvit_xlarge_tf_512(pretrained: bool = False, **kwargs) -> MaxViT:
    model_args = dict(img_size=512)
    return _create_maxvit('zoo_maxvit_xlarge_tf_512', pretrained=pretrained, **dict(model_args, **kwargs))
