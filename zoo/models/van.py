"""VAN: Visual Attention Network.

Paper: `Visual Attention Network` - https://arxiv.org/abs/2202.09741 (arXiv:2202.09741)
Original code: https://github.com/Visual-Attention-Network/VAN-Classification (Apache-2.0)
Original ImageNet-1k weights: the Hugging Face repos `Visual-Attention-Network/VAN-{Tiny,Small,Base,Large}-original`
(VAN-B0..B3), released under Apache-2.0. VAN-B4..B6 weights were published only in a Tsinghua Cloud folder, so
those variants have no pretrained tag.

A hierarchical conv net: four stages at strides 4/8/16/32, each an overlapping patch embedding (conv + BN), blocks of
BN -> Large Kernel Attention and BN -> conv MLP with a depthwise conv, and a per-stage LayerNorm. The stage outputs
(after that norm) are the pyramid features; the last one is average-pooled for the classifier.
"""
import re
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    LayerNorm2d,
    LayerScale2d,
    calculate_drop_path_rates,
    to_2tuple,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from zoo.hub import build_model_with_cfg, register_sha256s, unwrap_state_dict
from zoo.layers import StagedModelMixin, init_pvt_weights, rename_pvt_key

__all__ = ['VAN']


class ConvBnPatchEmbed(nn.Module):
    """Strided conv with 'same'-style padding, then BatchNorm: the stem (7x7 /4) and each downsample (3x3 /2)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            patch_size: int = 7,
            stride: int = 4,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        patch_size = to_2tuple(patch_size)
        padding = (patch_size[0] // 2, patch_size[1] // 2)
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size=patch_size, stride=stride, padding=padding, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class LargeKernelAttention(nn.Module):
    """LKA: a 21x21 receptive field from a 5x5 depthwise conv, a 7x7 depthwise conv with dilation 3, and a 1x1 conv,
    used as an attention map that multiplies the input."""

    def __init__(self, dim: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **dd)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3, **dd)
        self.conv1 = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv1(self.conv_spatial(self.conv0(x)))
        return x * attn


class SpatialAttention(nn.Module):
    """1x1 conv -> GELU -> LKA -> 1x1 conv, with its own residual connection (inside the block's residual)."""

    def __init__(self, dim: int, act_layer: Type[nn.Module] = nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.proj1 = nn.Conv2d(dim, dim, 1, **dd)
        self.act = act_layer()
        self.lka = LargeKernelAttention(dim, **dd)
        self.proj2 = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.proj2(self.lka(self.act(self.proj1(x))))
        return x + shortcut


class DwConvMlp2d(nn.Module):
    """1x1 conv -> 3x3 depthwise conv -> act -> 1x1 conv, dropout after the act and after the last conv."""

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.dwconv(self.fc1(x))))
        return self.drop2(self.fc2(x))


class VanBlock(nn.Module):
    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            ls_init_value: float = 1e-2,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim, **dd)
        self.attn = SpatialAttention(dim, act_layer=act_layer, **dd)
        self.ls1 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        self.mlp = DwConvMlp2d(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.ls2 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class VanStage(nn.Module):
    """Optional downsample, blocks, then the stage's LayerNorm (its output is the stage's feature map)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            downsample: bool = True,
            mlp_ratio: float = 4.,
            ls_init_value: float = 1e-2,
            proj_drop: float = 0.,
            drop_path_rates: Optional[List[float]] = None,
            norm_eps: float = 1e-6,
            act_layer: Type[nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        if downsample:
            self.downsample = ConvBnPatchEmbed(in_chs, out_chs, patch_size=3, stride=2, **dd)
        else:
            self.downsample = nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.Sequential(*[
            VanBlock(
                out_chs,
                mlp_ratio=mlp_ratio,
                ls_init_value=ls_init_value,
                proj_drop=proj_drop,
                drop_path=drop_path_rates[i],
                act_layer=act_layer,
                **dd,
            )
            for i in range(depth)])
        self.norm = LayerNorm2d(out_chs, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class VAN(StagedModelMixin, nn.Module):
    """Visual Attention Network.

    Args:
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0 for none).
        global_pool: Global pooling type ('' for none: forward returns the NCHW feature map).
        embed_dims: Channels of each stage.
        depths: Blocks in each stage.
        mlp_ratios: MLP hidden width over channels, per stage.
        ls_init_value: Initial value of the layer scales.
        norm_eps: Epsilon of the per-stage LayerNorms.
        act_layer: Activation of the attention and the MLP.
        drop_rate: Dropout before the classifier (timm's meaning; the original code used `drop_rate` for the MLP
            dropout, here `proj_drop_rate`).
        proj_drop_rate: Dropout in the MLP.
        drop_path_rate: Stochastic depth rate, increasing linearly over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 320, 512),
            depths: Tuple[int, ...] = (3, 3, 12, 3),
            mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4),
            ls_init_value: float = 1e-2,
            norm_eps: float = 1e-6,
            act_layer: Type[nn.Module] = nn.GELU,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        num_stages = len(embed_dims)
        if not len(depths) == len(mlp_ratios) == num_stages:
            raise ValueError(
                f'embed_dims, depths and mlp_ratios need one entry per stage, got {len(embed_dims)}, {len(depths)} '
                f'and {len(mlp_ratios)}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = ConvBnPatchEmbed(in_chans, embed_dims[0], patch_size=7, stride=4, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        stages = []
        self.feature_info = []
        in_chs = embed_dims[0]
        for i in range(num_stages):
            stages.append(VanStage(
                in_chs,
                embed_dims[i],
                depth=depths[i],
                downsample=i > 0,
                mlp_ratio=mlp_ratios[i],
                ls_init_value=ls_init_value,
                proj_drop=proj_drop_rate,
                drop_path_rates=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                norm_eps=norm_eps,
                act_layer=act_layer,
                **dd,
            ))
            in_chs = embed_dims[i]
            self.feature_info += [dict(num_chs=in_chs, reduction=2 ** (i + 2), module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        self.apply(init_pvt_weights)  # VAN keeps PVTv2's init

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # the original lists none that exist; timm's optimizer factory already skips 1-d params (norms, layer scales)
        return set()


def _rename_original_key(k: str) -> str:
    k = rename_pvt_key(k)
    k = re.sub(r'\.layer_scale_(\d)$', r'.ls\1.gamma', k)
    k = k.replace('.attn.proj_1.', '.attn.proj1.').replace('.attn.proj_2.', '.attn.proj2.')
    return k.replace('.attn.spatial_gating_unit.', '.attn.lka.')


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VAN) -> Dict[str, torch.Tensor]:
    """Map an original VAN-Classification checkpoint (``patch_embed1.proj.weight``, ``block1.0.attn...``,
    ``norm1.weight``, ``head.weight``; optionally nested under ``state_dict`` or ``model``) onto this model's keys.
    A state dict already in this model's format passes through unchanged."""
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.proj.weight' in state_dict:
        return state_dict
    return {_rename_original_key(k): v for k, v in state_dict.items()}


def _create_van(variant: str, pretrained: bool = False, **kwargs) -> VAN:
    return build_model_with_cfg(
        VAN,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    # the original trained and evaluated with timm 0.4.12 data defaults taken from ViT's cfg: bicubic, crop 0.9,
    # mean = std = 0.5
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.9, 'interpolation': 'bicubic',
        'mean': IMAGENET_INCEPTION_MEAN, 'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'stem.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2202.09741', 'paper_name': 'Visual Attention Network',
        'origin_url': 'https://github.com/Visual-Attention-Network/VAN-Classification',
        **kwargs,
    }


def _official_in1k(hf_hub_id: str, filename: str) -> Dict:
    return _cfg(hf_hub_id=hf_hub_id, hf_hub_filename=filename)


default_cfgs = generate_default_cfgs({
    'zoo_van_b0.official_in1k': _official_in1k('Visual-Attention-Network/VAN-Tiny-original', 'van_tiny_754.pth.tar'),
    'zoo_van_b1.official_in1k': _official_in1k('Visual-Attention-Network/VAN-Small-original', 'van_small_811.pth.tar'),
    'zoo_van_b2.official_in1k': _official_in1k('Visual-Attention-Network/VAN-Base-original', 'van_base_828.pth.tar'),
    'zoo_van_b3.official_in1k': _official_in1k('Visual-Attention-Network/VAN-Large-original', 'van_large_839.pth.tar'),
    # B4..B6 weights (IN-1k and IN-22k pretrained) were published only on Tsinghua Cloud, not on a stable URL
    'zoo_van_b4': _cfg(),
    'zoo_van_b5': _cfg(),
    'zoo_van_b6': _cfg(),
})

# sha256 of the LFS objects, from the Hugging Face upload commits of each file ("Upload <file> with git-lfs":
# VAN-Tiny-original b13047f, VAN-Small-original 7c6fc22, VAN-Base-original 110abc6, VAN-Large-original b111445)
register_sha256s({
    'hf-hub:Visual-Attention-Network/VAN-Tiny-original/van_tiny_754.pth.tar':
        '058bda07d27a89f27bbec8f3e47e6bda5de4f51dc59d0fb1f3cb835acb9130d8',
    'hf-hub:Visual-Attention-Network/VAN-Small-original/van_small_811.pth.tar':
        '7515c3da81dfd7f00413a8fa1e1d93dc7ecd13340a29fba0c02aed0deea9660b',
    'hf-hub:Visual-Attention-Network/VAN-Base-original/van_base_828.pth.tar':
        '3fbae1db35c4f1f96c4d66f1c8b13cac9194043171ff8a7e87fd21eb43a93725',
    'hf-hub:Visual-Attention-Network/VAN-Large-original/van_large_839.pth.tar':
        '47010a5f353820551108cbd10c2ad60670c6e8a9cf7869867ea682caca23a677',
})


@register_model
def zoo_van_b0(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_van_b1(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_van_b2(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_van_b3(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b3', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_van_b4(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b4', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_van_b5(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(96, 192, 480, 768), depths=(3, 3, 24, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_van_b6(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(96, 192, 384, 768), depths=(6, 6, 90, 6), mlp_ratios=(8, 8, 4, 4))
    return _create_van('zoo_van_b6', pretrained=pretrained, **dict(model_args, **kwargs))
