"""BiFormer: Vision Transformer with Bi-Level Routing Attention.

Paper: `BiFormer: Vision Transformer with Bi-Level Routing Attention` - https://arxiv.org/abs/2303.08810
(arXiv:2303.08810, CVPR 2023)
Original code: https://github.com/rayleizhu/BiFormer (MIT); ported from commit 1697bbbeafb8680524898f1dcaac10defd0604be
(``models/biformer.py``, ``models/biformer_stl.py``, ``ops/bra_legacy.py``, ``models/_common.py`` and the dense backbone
``object_detection/models_mm/biformer_mm.py``).
Original weights: MIT, published by the authors on OneDrive only (links in the original README); there is no stable
file URL or published checksum, so no variant here has a pretrained tag. Load a downloaded file with
``pretrained_cfg_overlay=dict(file=...)``: the classification checkpoints (``{'model': state_dict, ...}``) and the
authors' COCO/ADE20K checkpoints (mmcv's ``{'state_dict': {'backbone.*', 'neck.*', ...}}``) both load.

Four stages at strides 4/8/16/32 (BiFormer-T/S/B: a stem of two 3x3 stride-2 convs with BatchNorm, 3x3 stride-2
conv + BatchNorm downsampling). Each block adds a 3x3 depthwise-conv position encoding, then pre-norm (LayerNorm, eps
1e-6) attention and a GELU MLP (ratio 3). Stages 1-3 use bi-level routing attention (BRA): the map is cut into
``n_win x n_win`` regions, region means of the projected queries and keys pick the ``topk`` most related key regions
of each query region (1, 4 and 16), and every token attends to the tokens of its region's routes; a 5x5 depthwise
conv of the values (LePE) is added before the output projection. Quirks the released weights depend on, kept here:
one qkv Linear split into q, k and v; the softmax scale is ``qk_dim ** -0.5`` over the whole qk width (not per
head); the routing is not differentiable; stage 4 is plain global attention with a fixed 8 heads, no qkv bias and
its LePE on the attention *input*; the classifier reads a BatchNorm2d of the last stage, mean-pooled.
BiFormer-STL (the paper's Swin-T-layout ablation model) has a 4x4 patchify stem, BatchNorm + 2x2 conv downsampling,
no position conv and MLP ratio 4.

The token level runs through ``kernels.routed_attention`` (no ``topk``-times gathered key/value copy, no score
matrix in memory) and the routing through ``kernels.region_topk``.

Any input size: where a stage's map is not a multiple of ``n_win`` it is padded at the bottom/right. By default this
reproduces the authors' ``auto_pad`` (which their detection/segmentation checkpoints were trained with): the
normalised tokens are zero-padded before the qkv projection, so padded tokens (whose q, k and v are the projection's
bias) enter the region means, the softmax and the LePE conv. ``mask_padding=True`` instead excludes them: region
means average real tokens only, no query region routes to an all-padding region, padded keys get no attention
weight and LePE sees the map's zero border as if no padding existed.
"""
import logging
import math
import re
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, calculate_drop_path_rates, to_ntuple, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from kernels import region_topk, routed_attention
from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import StagedModelMixin, fx_leaf, pad_bottom_right, pad_to_multiple

__all__ = ['BiFormer', 'BiLevelRoutingAttention', 'GlobalAttentionLePE']

_logger = logging.getLogger(__name__)

# q, k and v elements (all heads) above which BiLevelRoutingAttention calls routed_attention per group of heads
_ROUTED_CALL_ELEMENTS = 1 << 23


@fx_leaf
def _routed_by_head_groups(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        index: torch.Tensor,
        n_win: int,
        scale: float,
        height: int,
        width: int,
        qkv_numel: int,
        valid_hw: Optional[Tuple[int, int]] = None,
) -> torch.Tensor:
    """``routed_attention`` of (B, heads, Hp, Wp, D) maps, as (B, height, width, heads, Dv) cropped to the real map.

    routed_attention keeps region-major copies of its inputs and output; on large maps (``qkv_numel`` above
    ``_ROUTED_CALL_ELEMENTS``) one call per group of heads bounds them to a group (heads are independent, the routes
    shared). torch.export makes one call (a group count would pin the exported sizes)."""
    heads = q.shape[1]
    groups = 1 if torch.compiler.is_exporting() else max(1, min(heads, math.ceil(qkv_numel / _ROUTED_CALL_ELEMENTS)))
    size = math.ceil(heads / groups)
    masked = {} if valid_hw is None else dict(valid_hw=valid_hw)
    parts = []
    for i in range(0, heads, size):
        part = routed_attention(q[:, i:i + size], k[:, i:i + size], v[:, i:i + size], index, n_win, scale=scale,
                                **masked)
        parts.append(part.permute(0, 2, 3, 1, 4)[:, :height, :width])
        del part
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=3)


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on an NHWC map (BiFormer's ``bra_legacy.BiLevelRoutingAttention`` with
    ``kv_downsample_mode='identity'``, ``param_attention='qkvo'``, no parametric, differentiable or soft routing:
    the configuration of every released model).

    Args:
        dim: Channels of the input, the values and the output.
        num_heads: Heads; ``qk_dim`` and ``dim`` are split evenly among them (heads-major channels).
        n_win: Regions per side of the (padded) map.
        topk: Key regions each query region attends to, ``1 <= topk <= n_win**2``.
        qk_dim: Channels of the queries and keys (default ``dim``).
        side_dwconv: Kernel of the depthwise LePE conv on the values (0 for none).
        mask_padding: Exclude padded tokens (see the module docstring) instead of BiFormer's ``auto_pad``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            topk: int = 4,
            qk_dim: Optional[int] = None,
            side_dwconv: int = 5,
            mask_padding: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        qk_dim = qk_dim or dim
        if num_heads < 1 or qk_dim % num_heads or dim % num_heads:
            raise ValueError(f'qk_dim ({qk_dim}) and dim ({dim}) must be multiples of num_heads ({num_heads})')
        if n_win < 1 or not 1 <= topk <= n_win * n_win:
            raise ValueError(f'topk must be in [1, n_win**2] = [1, {n_win * n_win}] for n_win {n_win}, got {topk}')
        self.dim, self.qk_dim, self.num_heads = dim, qk_dim, num_heads
        self.n_win, self.topk = n_win, topk
        self.mask_padding = mask_padding
        # the original scales by the whole qk width, not the head width; its weights were trained with it
        self.scale = qk_dim ** -0.5
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, **dd)
        self.lepe = nn.Conv2d(
            dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd) if side_dwconv > 0 else None
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None) -> torch.Tensor:
        """x: (B, H, W, dim) tokens; ``norm`` (the block's pre-norm) is applied here so that the normalised copy is
        freed as soon as the qkv projection has read it."""
        B, H, W, C = x.shape
        n = self.n_win
        if norm is not None:
            x = norm(x)
        # auto_pad: zeros before the projection, so padded tokens get the bias as q, k and v; with mask_padding the
        # kernels never read them (valid_hw equal to the map's size, where nothing is padded, masks nothing)
        x = pad_bottom_right(x, pad_to_multiple(H, n), pad_to_multiple(W, n), channels_last=True)
        qkv = self.qkv(x)
        del x
        q, k, v = qkv.split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        heads = self.num_heads
        # heads-major channels, as the original's rearrange '(m c)'
        q = q.unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)
        k = k.unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)
        vh = v.unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)
        masked = dict(valid_hw=(H, W)) if self.mask_padding else {}
        index = region_topk(q, k, n, self.topk, **masked)
        out = _routed_by_head_groups(q, k, vh, index, n, self.scale, H, W, qkv.numel(), **masked).reshape(B, H, W, C)
        del q, k, vh, qkv
        if self.lepe is not None:
            # auto_pad: LePE reads the padded values (the bias) across the border; masked: only the real map.
            # A contiguous copy of v for the conv, so that autograd keeps it and not the whole qkv buffer
            v = v[:, :H, :W] if masked else v
            lepe = self.lepe(v.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
            out = out + lepe.permute(0, 2, 3, 1)[:, :H, :W]
        return self.proj(out)


class GlobalAttentionLePE(nn.Module):
    """Plain multi-head self-attention over all tokens of an NHWC map, plus a depthwise conv (LePE) of the attention
    *input* added before the output projection (the original ``_common.AttentionLePE``, BiFormer's stage 4)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            side_dwconv: int = 5,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f'dim ({dim}) must be a multiple of num_heads ({num_heads})')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.lepe = nn.Conv2d(
            dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd) if side_dwconv > 0 else None
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None) -> torch.Tensor:
        if norm is not None:
            x = norm(x)
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads)  # no -1: B may be 0
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the original
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` that saves ``h`` but not ``gelu(h)``: backward recomputes the GELU (an
    elementwise op) instead of keeping a second hidden-width map per block alive until backward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad_out @ weight.to(grad_out.dtype), h)
        flat = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            g = F.gelu(h).to(grad_out.dtype)
            grad_w = (flat.t() @ g.reshape(-1, g.shape[-1])).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = flat.sum(0).to(weight.dtype)
        return grad_h, grad_w, grad_b


class BiFormerMlp(Mlp):
    """timm's ``Mlp`` (fc1 -> GELU -> fc2, no dropout or norm) that applies the block's pre-norm itself, so that the
    normalised copy is freed as soon as ``fc1`` has read it, and that recomputes the GELU in backward rather than
    saving its output (each saves one map of the block's width or hidden width; same numbers)."""

    def __init__(self, in_features: int, hidden_features: int, device=None, dtype=None):
        super().__init__(in_features, hidden_features, act_layer=nn.GELU, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None) -> torch.Tensor:
        x = self.fc1(x if norm is None else norm(x))
        if torch.is_grad_enabled() and not torch.jit.is_scripting():
            return _GeluLinear.apply(x, self.fc2.weight, self.fc2.bias)
        x = self.act(x)  # rebinding frees fc1's output before fc2 runs
        return self.fc2(x)


class BiFormerBlock(nn.Module):
    """[x + DWConv3x3(x)] -> x + Attn(LN(x)) -> x + MLP(LN(x)), on NHWC tokens."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            topk: Optional[int] = 4,
            qk_dim: Optional[int] = None,
            global_heads: int = 8,
            mlp_ratio: float = 3.,
            pos_conv: bool = True,
            side_dwconv: int = 5,
            drop_path: float = 0.,
            mask_padding: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd) if pos_conv else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if topk is None:
            self.attn = GlobalAttentionLePE(dim, num_heads=global_heads, side_dwconv=side_dwconv, **dd)
        else:
            self.attn = BiLevelRoutingAttention(
                dim, num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim, side_dwconv=side_dwconv,
                mask_padding=mask_padding, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = BiFormerMlp(dim, int(mlp_ratio * dim), **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path1(self.attn(x, self.norm1))
        x = x + self.drop_path2(self.mlp(x, self.norm2))
        return x


class ConvStem(nn.Module):
    """BiFormer-T/S/B stem: 3x3 conv /2 -> BN -> GELU -> 3x3 conv /2 -> BN."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(out_chs // 2, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class PatchStem(nn.Module):
    """BiFormer-STL stem: 4x4 conv /4 -> BN."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 4, stride=4, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the conv drops a remainder of the size; pad to a multiple of 4 so every pixel is seen (no-op at 224)
        x = pad_bottom_right(x, pad_to_multiple(x.shape[-2], 4), pad_to_multiple(x.shape[-1], 4))
        return self.norm(self.conv(x))


class ConvDownsample(nn.Module):
    """BiFormer-T/S/B downsampling: 3x3 conv /2 -> BN."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class PatchMerging(nn.Module):
    """BiFormer-STL downsampling: BN -> 2x2 conv /2."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs, **dd)
        self.conv = nn.Conv2d(in_chs, out_chs, 2, stride=2, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        # odd maps: pad the normalised map with zeros so the last row/column is not dropped
        return self.conv(pad_bottom_right(x, pad_to_multiple(x.shape[-2], 2), pad_to_multiple(x.shape[-1], 2)))


class BiFormerStage(nn.Module):
    """Optional downsample (NCHW), then the blocks on NHWC tokens; NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            downsample: Optional[str] = 'conv',
            num_heads: int = 2,
            n_win: int = 7,
            topk: Optional[int] = 4,
            qk_dim: Optional[int] = None,
            global_heads: int = 8,
            mlp_ratio: float = 3.,
            pos_conv: bool = True,
            side_dwconv: int = 5,
            drop_path_rates: Optional[Sequence[float]] = None,
            mask_padding: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        if downsample == 'conv':
            self.downsample = ConvDownsample(in_chs, out_chs, **dd)
        elif downsample == 'patch_merging':
            self.downsample = PatchMerging(in_chs, out_chs, **dd)
        else:
            self.downsample = nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.Sequential(*[
            BiFormerBlock(
                out_chs,
                num_heads,
                n_win=n_win,
                topk=topk,
                qk_dim=qk_dim,
                global_heads=global_heads,
                mlp_ratio=mlp_ratio,
                pos_conv=pos_conv,
                side_dwconv=side_dwconv,
                drop_path=drop_path_rates[i],
                mask_padding=mask_padding,
                **dd,
            )
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


def _per_stage(name: str, value, num_stages: int) -> Tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else to_ntuple(num_stages)(value)
    if len(values) != num_stages:
        raise ValueError(f'{name} needs one entry per stage ({num_stages}), got {len(values)}: {value!r}')
    return values


class BiFormer(StagedModelMixin, nn.Module):
    """BiFormer.

    Args:
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0 for none).
        global_pool: Global pooling type ('' for none: forward returns the NCHW feature map).
        embed_dims: Channels of each stage.
        depths: Blocks in each stage.
        head_dim: Channels per head of the routing attention (heads = ``qk_dim // head_dim``).
        qk_dims: Query/key channels of each stage (default the stage's channels).
        topks: Routed regions per query region in each stage; None for plain global attention with LePE.
        n_win: Regions per side, for all stages or per stage (7 for classification at 224; the authors use 16 for
            detection and 8 for segmentation).
        global_heads: Heads of the global attention stages (the original's fixed 8).
        mlp_ratios: MLP hidden width over channels, per stage.
        stem_type: 'conv' (two 3x3 /2 convs, BiFormer-T/S/B) or 'patch' (4x4 /4 conv, BiFormer-STL).
        downsample_type: 'conv' (3x3 /2 conv + BN) or 'patch_merging' (BN + 2x2 /2 conv, BiFormer-STL).
        pos_conv: A 3x3 depthwise-conv position encoding before each block.
        side_dwconv: Kernel of the LePE depthwise conv.
        mask_padding: Exclude the tokens padded to a multiple of ``n_win`` from routing and attention, instead of
            reproducing the authors' ``auto_pad`` (the default; see the module docstring).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth rate, increasing linearly over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (4, 4, 18, 4),
            head_dim: int = 32,
            qk_dims: Optional[Tuple[int, ...]] = None,
            topks: Tuple[Optional[int], ...] = (1, 4, 16, None),
            n_win: Union[int, Tuple[int, ...]] = 7,
            global_heads: int = 8,
            mlp_ratios: Union[float, Tuple[float, ...]] = 3.,
            stem_type: str = 'conv',
            downsample_type: str = 'conv',
            pos_conv: bool = True,
            side_dwconv: int = 5,
            mask_padding: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        num_stages = len(embed_dims)
        depths = _per_stage('depths', depths, num_stages)
        qk_dims = _per_stage('qk_dims', qk_dims if qk_dims is not None else embed_dims, num_stages)
        topks = _per_stage('topks', topks, num_stages)
        n_wins = _per_stage('n_win', n_win, num_stages)
        mlp_ratios = _per_stage('mlp_ratios', mlp_ratios, num_stages)
        if stem_type not in ('conv', 'patch'):
            raise ValueError(f"stem_type must be 'conv' or 'patch', got {stem_type!r}")
        if downsample_type not in ('conv', 'patch_merging'):
            raise ValueError(f"downsample_type must be 'conv' or 'patch_merging', got {downsample_type!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.n_win = n_wins
        self.mask_padding = mask_padding

        stem_cls = ConvStem if stem_type == 'conv' else PatchStem
        self.stem = stem_cls(in_chans, embed_dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            if qk_dims[i] % head_dim:
                raise ValueError(f'qk_dims[{i}] ({qk_dims[i]}) must be a multiple of head_dim ({head_dim})')
            stages.append(BiFormerStage(
                embed_dims[i - 1] if i else embed_dims[0],
                embed_dims[i],
                depth=depths[i],
                downsample=downsample_type if i else None,
                num_heads=qk_dims[i] // head_dim,
                n_win=n_wins[i],
                topk=topks[i],
                qk_dim=qk_dims[i],
                global_heads=global_heads,
                mlp_ratio=mlp_ratios[i],
                pos_conv=pos_conv,
                side_dwconv=side_dwconv,
                drop_path_rates=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                mask_padding=mask_padding,
                **dd,
            ))
            self.feature_info += [dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.norm = nn.BatchNorm2d(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module):
        # as the original: truncated normal Linear weights, zero biases; convs and norms keep PyTorch's defaults
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # the original names 'pos_embed' and 'cls_token', which match no parameter name exactly (its blocks'
        # pos_embed convs were decayed); timm's optimizer factory already skips 1-d parameters and biases
        return set()


# --- original checkpoints ------------------------------------------------------------------------------------------

# BiFormer-T/S/B (models/biformer.py): stem and downsamples are nn.Sequential, blocks directly in stages.i
_ORIGINAL_STEM = {'0': 'conv1', '1': 'norm1', '3': 'conv2', '4': 'norm2'}
_ORIGINAL_DOWNSAMPLE = {'0': 'conv', '1': 'norm'}
# BiFormer-STL (models/biformer_stl.py): patchify stem conv/BN, BN-then-conv downsamples, blocks in stages.i.blocks
_ORIGINAL_STL_STEM = {'0': 'conv', '1': 'norm'}
_ORIGINAL_STL_DOWNSAMPLE = {'0': 'norm', '1': 'conv'}
# heads of the authors' mmdet/mmseg models, beside `backbone.`; their per-stage output norms `backbone.extra_norms.N`
# (timm LayerNorm2d, eps 1e-6) belong to the mm adapter (zoo.mm), not to this model
_EXTRA_NORMS = re.compile(r'^extra_norms\.\d+\.')


def _rename_original_key(k: str, stl: bool) -> str:
    stem, downsample = (_ORIGINAL_STL_STEM, _ORIGINAL_STL_DOWNSAMPLE) if stl else (_ORIGINAL_STEM, _ORIGINAL_DOWNSAMPLE)
    k = re.sub(r'^downsample_layers\.0\.(\d+)\.', lambda m: f'stem.{stem[m[1]]}.', k)
    k = re.sub(r'^downsample_layers\.(\d+)\.(\d+)\.', lambda m: f'stages.{m[1]}.downsample.{downsample[m[2]]}.', k)
    k = re.sub(r'^stages\.(\d+)\.(blocks\.)?(\d+)\.', r'stages.\1.blocks.\3.', k)
    k = k.replace('.attn.qkv.qkv.', '.attn.qkv.').replace('.attn.wo.', '.attn.proj.')
    k = re.sub(r'\.mlp\.0\.', '.mlp.fc1.', k)
    k = re.sub(r'\.mlp\.[23]\.', '.mlp.fc2.', k)  # mlp.3 behind the Identity of BiFormer-T/S/B, mlp.2 in STL
    k = re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', k)
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Optional[BiFormer]) -> Dict[str, torch.Tensor]:
    """Map an original BiFormer checkpoint onto this model's keys.

    Classification checkpoints (rayleizhu/BiFormer ``main.py``: the weights under ``model``; its loader reads that
    key) name ``downsample_layers.0.{0,1,3,4}`` (the stem), ``downsample_layers.{1,2,3}.{0,1}``,
    ``stages.{i}.{j}.{pos_embed, norm1, attn.{qkv.qkv, wo, lepe}, norm2, mlp.{0,3}}`` (stage 4:
    ``attn.{qkv, proj, lepe}``), ``norm`` (BatchNorm2d) and ``head``; BiFormer-STL's name
    ``stages.{i}.blocks.{j}.*`` and ``mlp.{0,2}``. The authors' detection/segmentation checkpoints (mmcv's
    ``state_dict``) hold the backbone under ``backbone.`` beside the neck and heads, without ``norm`` and ``head``
    but with ``extra_norms.{0..3}``: the backbone keys are taken, the rest and ``extra_norms`` dropped, and the
    final norm and classifier keep the model's own initial values (there are none to load). A state dict already in
    this model's format (``stem.*``) passes through unchanged.
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
        state_dict = {k: v for k, v in state_dict.items() if not _EXTRA_NORMS.match(k)}
    if not any(k.startswith('stem.') for k in state_dict):
        stl = any(re.match(r'^stages\.\d+\.blocks\.', k) for k in state_dict)
        state_dict = {_rename_original_key(k, stl): v for k, v in state_dict.items()}
    if model is not None and not any(k.startswith('norm.') for k in state_dict):
        own = model.state_dict()
        missing = [k for k in own if k.startswith(('norm.', 'head.'))]
        if missing:
            _logger.warning('checkpoint has no final norm / classifier (a dense-task backbone): they keep their '
                            'initial values')
            state_dict = dict(state_dict, **{k: own[k] for k in missing})
    return state_dict


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    return build_model_with_cfg(
        BiFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    # the original evaluates DeiT-style: bicubic resize to 256/224 of the size, centre crop, ImageNet mean/std
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2303.08810',
        'paper_name': 'BiFormer: Vision Transformer with Bi-Level Routing Attention',
        'origin_url': 'https://github.com/rayleizhu/BiFormer',
        **kwargs,
    }


# The authors' ImageNet-1k weights are on OneDrive only, as share links that all end in the same file name `content`
# and are reported broken (rayleizhu/BiFormer#53), with no published checksum, so the cfgs name no source and
# pretrained=True needs pretrained_cfg_overlay=dict(file=...). The README's links, for reference:
#   tiny  https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content
#   small https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content
#   base  https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content
#   stl   https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChSf-m7ujkvx9lIQ1/root/content
default_cfgs = generate_default_cfgs({
    'zoo_biformer_tiny': _cfg(),
    'zoo_biformer_small': _cfg(),
    'zoo_biformer_base': _cfg(),
    'zoo_biformer_stl': _cfg(first_conv='stem.conv'),
})


@register_model
def zoo_biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer('zoo_biformer_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer('zoo_biformer_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer('zoo_biformer_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    model_args = dict(
        depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=4., stem_type='patch',
        downsample_type='patch_merging', pos_conv=False)
    return _create_biformer('zoo_biformer_stl', pretrained=pretrained, **dict(model_args, **kwargs))
