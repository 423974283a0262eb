"""LITv2: Fast Vision Transformers with HiLo Attention.

Paper: `Fast Vision Transformers with HiLo Attention` - https://arxiv.org/abs/2205.13213 (arXiv:2205.13213)
Original code: https://github.com/ziplab/LITv2 (Apache-2.0; classification model in ``classification/models/``)
Original ImageNet-1k weights: GitHub release v1.0 of ziplab/LITv2 (``litv2_{s,m,b}.pth`` at 224, ``litv2_b_384.pth``
fine-tuned at 384), released with the code under Apache-2.0.

Four stages at strides 4/8/16/32. A 4x4 patch embedding (conv + LayerNorm), then:

* stages 1-2: ConvFFN blocks only (LayerNorm -> Linear -> 3x3 depthwise conv -> GELU -> Linear, residual), no
  attention (the early, high-resolution stages are left to the convolutions);
* stage 3: blocks of HiLo attention + ConvFFN. HiLo splits the heads: ``int(num_heads * alpha)`` Lo-Fi heads attend
  from every query to the map average-pooled over s x s cells (s = ``local_ws``), the remaining Hi-Fi heads attend
  inside non-overlapping s x s windows; the two outputs (Hi-Fi first) are concatenated along channels, each with its
  own projection (``h_qkv``/``h_proj``, ``l_q``/``l_kv``/``l_proj``);
* stage 4: ``local_ws = 1``, which the original treats as plain multi-head attention over all tokens (all heads
  Lo-Fi, keys and values from the unpooled map);
* between stages, Deformable Token Merging (DTM, from LITv1): a 2x2 stride-2 deformable convolution whose offsets come
  from a plain 2x2 stride-2 conv (``conv_offset``, zero-initialised), then BatchNorm and GELU.

Where this port differs from the original code (the numbers are equal wherever the original runs):

* DTM's deformable convolution is ``torchvision.ops.deform_conv2d`` instead of the authors' compiled DCN extension
  (CUDA only). Same offset layout (channel ``2 * (i * kw + j)`` is the y offset of kernel tap (i, j), the next one its
  x offset), same bilinear sampling with zeros outside the map; tests/models/test_litv2.py checks it against the
  authors' formulation on the same tensors.
* Hi-Fi runs through ``kernels.window_attention`` (fused, no window partition copies); Lo-Fi and stage 4 through
  ``torch.nn.functional.scaled_dot_product_attention``.
* Any input size. The original classification model takes only its ``img_size`` (square, with every stage-3 map a
  multiple of the window); the original detection/segmentation backbone pads the stem input to a multiple of 4 and
  the normalised HiLo input to a multiple of the window with zeros, lets the Hi-Fi queries attend to those zero
  tokens, averages them into the Lo-Fi pooled keys, and floors odd maps at DTM (dropping the last row/column). Here:
  the stem pads to a multiple of 4 (as the original backbone), Hi-Fi windows are padded inside the kernel with the
  padded keys masked out of the softmax, the Lo-Fi pooling averages the real tokens of each (possibly partial) cell
  (``ceil_mode``), and DTM pads odd maps with a zero row/column (the original's outputs are kept exactly, one more
  row/column is added), so stage i is ceil(H / 2 ** (i + 2)) high. Wherever both sides of the input are multiples of
  32 (e.g. 224, 384, 800 x 1216) this is the original computation.
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    calculate_drop_path_rates,
    to_2tuple,
    trunc_normal_,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from torchvision.ops import deform_conv2d

from kernels import window_attention
from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import StagedModelMixin, fx_leaf, pad_bottom_right, pad_to_multiple

__all__ = ['LITv2']


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (conv, kernel = stride = patch size) and LayerNorm; NCHW in, NHWC out. The
    input is zero-padded at the bottom/right up to a multiple of the patch size, as the original backbone does."""

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 96,
            patch_size: int = 4,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, **dd)
        self.norm = norm_layer(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        x = pad_bottom_right(x, pad_to_multiple(H, ph), pad_to_multiple(W, pw))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


@fx_leaf
def _deform_conv2d(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: Tuple[int, int],
        padding: Tuple[int, int],
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` in the dtype of ``x``. torchvision's kernels take float32/64, and float16 on
    CUDA only (the CPU kernel fails on float16, also under autocast, where x and offset arrive in float16 and the
    weight in float32): any other dtype is computed in float32."""
    dtype = x.dtype
    native = dtype in (torch.float32, torch.float64) or (dtype == torch.float16 and x.is_cuda)
    compute = dtype if native else torch.float32
    x, offset, weight, bias = (t.to(compute) for t in (x, offset, weight, bias))
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding).to(dtype)


class DeformConv2dPack(nn.Module):
    """Deformable convolution (DCNv1, no modulation) with its own offset predictor, as the authors'
    ``DeformConv2dPack``: ``offset = conv_offset(x)`` (same kernel, stride and padding, zero-initialised, so training
    starts from a plain convolution), then ``torchvision.ops.deform_conv2d`` with ``weight`` and ``bias``."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 2,
            stride: int = 2,
            padding: int = 0,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.kernel_size = to_2tuple(kernel_size)
        self.stride = to_2tuple(stride)
        self.padding = to_2tuple(padding)
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, *self.kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(out_chs, **dd))
        self.conv_offset = nn.Conv2d(
            in_chs, 2 * self.kernel_size[0] * self.kernel_size[1], self.kernel_size, self.stride, self.padding, **dd)
        self.reset_parameters()

    def reset_parameters(self):
        # as the original (and nn.Conv2d): Kaiming-uniform weight, uniform bias; zero offsets
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding)


class DeformableTokenMerging(nn.Module):
    """DTM: 2x2 stride-2 deformable conv to twice the channels, BatchNorm, GELU. NHWC in and out. An odd map gets a
    zero row/column at the bottom/right first: the original's outputs are unchanged by it (its bilinear sampling
    reads zeros outside the map) and the merged map is ceil(H / 2) x ceil(W / 2)."""

    def __init__(self, dim: int, out_dim: int, act_layer: Type[nn.Module] = nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.dconv = DeformConv2dPack(dim, out_dim, kernel_size=2, stride=2, padding=0, **dd)
        self.norm = nn.BatchNorm2d(out_dim, **dd)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        x = pad_bottom_right(x.permute(0, 3, 1, 2), pad_to_multiple(H, 2), pad_to_multiple(W, 2))
        x = self.act(self.norm(self.dconv(x.contiguous())))
        return x.permute(0, 2, 3, 1)


class HiLoAttention(nn.Module):
    """HiLo attention on a (B, H, W, C) map.

    Heads of width ``dim // num_heads`` split into ``int(num_heads * alpha)`` Lo-Fi heads and the rest Hi-Fi heads.
    Hi-Fi: ``h_qkv`` -> attention inside non-overlapping ``window_size`` x ``window_size`` windows -> ``h_proj``.
    Lo-Fi: queries ``l_q`` of every token attend to keys/values ``l_kv`` of the map average-pooled over
    ``window_size`` x ``window_size`` cells -> ``l_proj``. The output is [Hi-Fi, Lo-Fi] along channels. As in the
    original, ``window_size == 1`` makes every head Lo-Fi over the unpooled map (plain multi-head attention), and
    ``alpha`` of 0 or 1 leaves only Hi-Fi or only Lo-Fi heads (and only their parameters).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            window_size: int = 2,
            alpha: float = 0.5,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'HiLo: dim {dim} must be a multiple of num_heads {num_heads}')
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f'HiLo: window_size (local_ws) must be an int >= 1 in a stage with attention, '
                             f'got {window_size!r}')
        if not 0. <= alpha <= 1.:
            raise ValueError(f'HiLo: alpha must be in [0, 1], got {alpha}')
        self.dim = dim
        self.head_dim = dim // num_heads
        self.ws = window_size
        self.l_heads = int(num_heads * alpha)  # truncated as the original: 12 * 0.9 -> 10
        self.h_heads = num_heads - self.l_heads
        if self.ws == 1:  # the original: ws 1 is plain multi-head attention, all heads Lo-Fi (no pooling)
            self.h_heads, self.l_heads = 0, num_heads
        self.l_dim = self.l_heads * self.head_dim
        self.h_dim = self.h_heads * self.head_dim
        self.scale = qk_scale or self.head_dim ** -0.5

        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim, **dd)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim, **dd)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        # qkv channels are ordered (3, heads, head_dim), as the original's reshape reads them
        q, k, v = self.h_qkv(x).view(B, H, W, 3, self.h_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5).unbind(0)
        x = window_attention(q, k, v, self.ws, scale=self.scale)  # (B, heads, H, W, head_dim)
        return self.h_proj(x.permute(0, 2, 3, 1, 4).reshape(B, H, W, self.h_dim))

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q = self.l_q(x).view(B, H * W, self.l_heads, self.head_dim).transpose(1, 2)
        if self.ws > 1:
            # mean over the real tokens of each ws x ws cell; a partial cell at the bottom/right (ceil_mode) averages
            # only the tokens it holds, equal to the original's AvgPool2d(ws, ws) wherever H and W are multiples
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws, ceil_mode=True).permute(0, 2, 3, 1)
        kv = self.l_kv(x).reshape(B, x.shape[1] * x.shape[2], 2, self.l_heads, self.head_dim)  # no -1: B may be 0
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, heads, H * W, head_dim)
        return self.l_proj(x.transpose(1, 2).reshape(B, H, W, self.l_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.h_heads == 0:
            return self.lofi(x)
        if self.l_heads == 0:
            return self.hifi(x)
        return torch.cat((self.hifi(x), self.lofi(x)), dim=-1)


class DwMlp(nn.Module):
    """The original's DWMlp on NHWC tokens: fc1 -> 3x3 depthwise conv -> act -> dropout -> fc2 -> dropout."""

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
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, **dd)
        self.drop2 = nn.Dropout(drop)
        # as the original: He-normal on fan-out per group
        nn.init.normal_(self.dwconv.weight, 0., math.sqrt(2.0 / 9))
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop1(self.act(x))
        return self.drop2(self.fc2(x))


class LitBlock(nn.Module):
    """``x + attn(norm1(x))`` (HiLo; only in stages with attention), then ``x + mlp(norm2(x))``; NHWC."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            use_attn: bool = True,
            window_size: int = 2,
            alpha: float = 0.5,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.use_attn = use_attn
        if use_attn:
            self.norm1 = norm_layer(dim, **dd)
            self.attn = HiLoAttention(
                dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, window_size=window_size,
                alpha=alpha, **dd)
            self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = DwMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_attn:
            x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class LitStage(nn.Module):
    """DTM from the previous stage (none in the first), then the blocks; NHWC."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            downsample: bool = True,
            use_attn: bool = True,
            window_size: int = 2,
            alpha: float = 0.5,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            drop_path_rates: Optional[List[float]] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        if downsample:
            self.downsample = DeformableTokenMerging(in_dim, dim, act_layer=act_layer, **dd)
        else:
            self.downsample = nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.Sequential(*[
            LitBlock(
                dim,
                num_heads,
                use_attn=use_attn,
                window_size=window_size,
                alpha=alpha,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop,
                drop_path=drop_path_rates[i],
                act_layer=act_layer,
                norm_layer=norm_layer,
                **dd,
            )
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class LITv2(StagedModelMixin, nn.Module):
    """LITv2 (HiLo attention).

    Args:
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0 for none).
        global_pool: Global pooling type ('' for none: forward returns the NHWC feature map).
        embed_dim: Channels of the first stage; stage i has ``embed_dim * 2 ** i``.
        depths: Blocks in each stage.
        num_heads: Attention heads in each stage (head width ``dim // heads``; unused in stages without attention).
        has_msa: Per stage, 1 for HiLo + ConvFFN blocks, 0 for ConvFFN-only blocks.
        alpha: Share of Lo-Fi heads (``int(num_heads * alpha)`` of them).
        local_ws: HiLo window size ``s`` per stage (1: plain attention; ignored where ``has_msa`` is 0).
        mlp_ratio: ConvFFN hidden width over channels.
        qkv_bias: Biases in ``h_qkv``, ``l_q`` and ``l_kv``.
        qk_scale: Attention logit scale; default ``head_dim ** -0.5``.
        patch_size: Stem patch size.
        drop_rate: Dropout before the classifier (timm's meaning; the original had none there and used
            ``drop_rate`` for the ConvFFN dropout, here ``proj_drop_rate``).
        proj_drop_rate: Dropout in the ConvFFN.
        drop_path_rate: Stochastic depth rate, increasing linearly over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            has_msa: Sequence[int] = (0, 0, 1, 1),
            alpha: float = 0.9,
            local_ws: Sequence[int] = (0, 0, 2, 1),
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            patch_size: int = 4,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        num_stages = len(depths)
        if not len(num_heads) == len(has_msa) == len(local_ws) == num_stages:
            raise ValueError(
                f'depths, num_heads, has_msa and local_ws need one entry per stage, got {len(depths)}, '
                f'{len(num_heads)}, {len(has_msa)} and {len(local_ws)}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'
        self.grad_checkpointing = False

        self.stem = PatchEmbed(in_chans, embed_dim, patch_size=patch_size, norm_layer=norm_layer, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(LitStage(
                dims[i - 1] if i > 0 else embed_dim,
                dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                downsample=i > 0,
                use_attn=has_msa[i] == 1,
                window_size=local_ws[i],
                alpha=alpha,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop_rate,
                drop_path_rates=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                act_layer=act_layer,
                norm_layer=norm_layer,
                **dd,
            ))
            self.feature_info += [dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = norm_layer(self.num_features, **dd)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC', **dd)

        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module):
        # as the original: truncated normal for every Linear, unit LayerNorms; convs keep their own init
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # the original lists only names that do not exist in LITv2 (absolute_pos_embed, relative_position_bias_table)
        # and exempts 1-d parameters and biases, which timm's optimizer factory already does
        return set()

    def stage_to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2).contiguous()


def _rename_original_key(k: str) -> str:
    k = re.sub(r'^patch_embed\.', 'stem.', k)
    # the original's DTM ends stage i; here it starts stage i + 1
    k = re.sub(r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.', k)
    k = re.sub(r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.', k)
    k = k.replace('.downsample.norm_layer.', '.downsample.norm.')
    k = k.replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.')
    k = re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Optional[LITv2]) -> Dict[str, torch.Tensor]:
    """Map an original LITv2 classification checkpoint onto this model's keys.

    The original (ziplab/LITv2 ``classification/``; the release files hold the weights under ``model``, or flat)
    names ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1,attn.{h_qkv,h_proj,l_q,l_kv,l_proj},norm2,
    mlp.{fc1,dwconv.dwconv,fc2}}``, ``layers.{i}.downsample.{dconv.{weight,bias,conv_offset},norm_layer}`` (the DTM
    at the end of stage i), ``norm`` and ``head``. A state dict in this model's format passes through unchanged.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.proj.weight' in state_dict:
        return state_dict
    return {_rename_original_key(k): v for k, v in state_dict.items()}


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_model_with_cfg(
        LITv2,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


_RELEASE = 'https://github.com/ziplab/LITv2/releases/download/v1.0/'


def _cfg(**kwargs) -> Dict:
    # the original evaluates at 224 with Resize(256) + CenterCrop(224), bicubic, ImageNet mean/std
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2205.13213',
        'paper_name': 'Fast Vision Transformers with HiLo Attention',
        'origin_url': 'https://github.com/ziplab/LITv2',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'zoo_litv2_small.official_in1k': _cfg(url=_RELEASE + 'litv2_s.pth'),
    'zoo_litv2_medium.official_in1k': _cfg(url=_RELEASE + 'litv2_m.pth'),
    'zoo_litv2_base.official_in1k': _cfg(url=_RELEASE + 'litv2_b.pth'),
    # fine-tuned at 384 and evaluated with TEST.CROP False: a plain resize to 384 x 384
    'zoo_litv2_base_384.official_in1k': _cfg(
        url=_RELEASE + 'litv2_b_384.pth', input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0,
        crop_mode='squash'),
})


@register_model
def zoo_litv2_small(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), alpha=0.9, local_ws=(0, 0, 2, 1))
    return _create_litv2('zoo_litv2_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_litv2_medium(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), alpha=0.9, local_ws=(0, 0, 2, 1))
    return _create_litv2('zoo_litv2_medium', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_litv2_base(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), alpha=0.9, local_ws=(0, 0, 2, 1))
    return _create_litv2('zoo_litv2_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_litv2_base_384(pretrained: bool = False, **kwargs) -> LITv2:
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), alpha=0.9, local_ws=(0, 0, 2, 1))
    return _create_litv2('zoo_litv2_base_384', pretrained=pretrained, **dict(model_args, **kwargs))
