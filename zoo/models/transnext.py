"""TransNeXt: Robust Foveal Visual Perception for Vision Transformers.

Paper: `TransNeXt: Robust Foveal Visual Perception for Vision Transformers` - https://arxiv.org/abs/2311.17132
(arXiv:2311.17132, CVPR 2024)
Original code: https://github.com/DaiShiResearch/TransNeXt (Apache-2.0); the classification model in
``classification/transnext.py`` + ``attention_native.py``, the multi-scale backbone in
``detection/maskrcnn/transnext_native.py``.
Weights: the authors' ImageNet-1k release on the Hugging Face hub
(``DaiShiResearch/transnext-{micro,tiny,small,base}-224-1k`` and the 384x384 fine-tunes
``DaiShiResearch/transnext-{small,base}-384-1k-ft-1k``), Apache-2.0.

Four stages at strides 4/8/16/32, each an overlapping patch embedding (conv + LayerNorm), blocks of
LayerNorm -> attention and LayerNorm -> convolutional GLU, and a per-stage LayerNorm (its output is the stage's feature
map). Stages 1-3 use *aggregated attention*: every query attends, in one softmax, to its 3x3 neighbourhood and to a
pooled copy of the whole map (1x1 conv, GELU, adaptive average pool to (H/sr, W/sr), LayerNorm), with length-scaled
cosine attention (queries and keys L2-normalised, logits scaled by ``softplus(temperature) * log(n_keys)``), a learned
query embedding, a local relative position bias, learnable tokens added to the local attention weights, and a
continuous position bias (CPB: a 2-512-heads MLP on log-spaced relative coordinates) on the pooled keys. Stage 4 is full
attention with the same cosine scaling and CPB. Head dim 24 throughout.

All attention runs through the fused ``kernels.neighborhood_attention`` op: its window is the 3x3 neighbourhood (keys
outside the image are excluded and the length scale counts only the valid ones, as the original's ``-inf`` padding mask
and ``get_seqlen_and_mask`` do), its extra keys are the pooled keys, and the CPB enters in FACTORED form: TransNeXt's
``torch.unique`` table of (dy, dx) pairs is the product grid of the unique dy and the unique dx, so the MLP output is a
(heads, Th, Tw) table with one (H, P) index per axis, and no (heads, H*W, M) bias is ever built. Stage 4's full
attention uses the same op with a 1x1 window whose single key is excluded by a large negative bias and every token as an
extra key.

Resolution handling follows the authors' detection/segmentation backbone (``cpb_mode``):

- ``'interpolate'`` (default; the original's ``is_extrapolation=False``): the CPB is evaluated on the grid of
  ``img_size`` (the "trained" resolution) and, for another feature-map size, the bias is resized bilinearly along the
  query and the pooled-key axes. At ``img_size`` this is exactly the classification model. The resize is separable, so
  it is done per axis on the (heads, Th, Tw) table; an axis whose sizes match keeps its index, only a resized axis is
  expanded (both axes resized: a table of the dense bias's size, still without the (N, M) gather and its copies).
- ``'extrapolate'`` (``is_extrapolation=True``): the CPB MLP is evaluated on the relative coordinates of the actual
  map, always factored.
- ``fixed_pool_size``: the classification code's "linear inference mode": the pooled keys are a fixed P x P grid
  whatever the input size (the CPB key grid too).

Relative coordinates are normalised by ``pretrain_size`` (224 for every released model, also the 384 fine-tunes).
"""
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, calculate_drop_path_rates, to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models.pvt_v2 import OverlapPatchEmbed
from torch.utils.checkpoint import checkpoint

from kernels import neighborhood_attention
from zoo.hub import build_model_with_cfg, register_sha256s, unwrap_state_dict
from zoo.layers import StagedModelMixin, fx_leaf, graph_constant, init_pvt_weights, is_tracing, rename_pvt_key

__all__ = ['TransNeXt']

_CPB_HIDDEN = 512
# fc1 activations per chunk when the CPB MLP runs without autograd (2**22 float32 = 16 MiB)
_CPB_CHUNK_ELEMENTS = 1 << 22
_CPB_MODES = ('interpolate', 'extrapolate')
# bias of stage 4's 1x1 window key (see Attention): excluded from the softmax, finite in fp16/bf16 too
_EXCLUDED = -3e4


# ---- relative coordinates of the continuous position bias ---------------------------------------------------------

class _Axis(NamedTuple):
    """One axis of the CPB: the unique relative offsets along it and how the (query, key) pairs index them."""
    values: torch.Tensor  # (T,) sorted unique offsets, normalised as the original (/ (pretrain - 1) * 8)
    index: torch.Tensor  # (Q, K) int64 into values: the original grid (trained grid in interpolate mode)
    resize: Optional[Tuple[int, int]]  # (H, P) to interpolate (Q, K) to, or None when the index applies as is


class CpbGeometry(NamedTuple):
    """Everything a stage's blocks need about the map size: pooled size and the CPB's per-axis tables."""
    pool_size: Tuple[int, int]
    coords: torch.Tensor  # (Th, Tw, 2) log-spaced (dy, dx) pairs: the CPB MLP's input
    axis_h: _Axis
    axis_w: _Axis
    out_index: Tuple[torch.Tensor, torch.Tensor]  # (H, Ph), (W, Pw): the op's extra_bias_index after expansion


def _axis(query: int, key: int, pretrain: int) -> Tuple[List[float], List[List[int]]]:
    """Sorted unique (query - pooled key) offsets along one axis and the (query, key) index into them.

    The original (``get_relative_position_cpb``) computes the offsets of every (query, key) pair of the 2-D maps
    and takes ``torch.unique`` over (dy, dx) rows; the same float operations per axis give the same values, and the
    pairs are all combinations of the per-axis values (their product grid, in the same lexicographic order).

    Plain Python, so that traced graphs (torch.compile, torch.export) hold the result as constants instead of a
    data-dependent ``torch.unique``. Exact: a pooled key (the original's adaptive average pool of 0..query-1) is the
    mean of a run of integers, so every offset is a half-integer, held exactly here and in float32; the one rounding
    step (the division by ``pretrain - 1``) gives the same float32 in double precision rounded to float32 as in
    float32 arithmetic (double rounding is innocuous for a division from 53 to 24 bits)."""
    # twice the pooled keys: adaptive pooling's bins [floor(i * Q / K), ceil((i + 1) * Q / K)) average to
    # (start + end - 1) / 2
    twice_keys = [(i * query) // key + -(-(i + 1) * query // key) - 1 for i in range(key)]
    twice = [[2 * q - c for c in twice_keys] for q in range(query)]  # twice the offsets, exact integers
    unique = sorted({t for row in twice for t in row})
    position = {t: i for i, t in enumerate(unique)}
    values = [t / 2 / (pretrain - 1) * 8 for t in unique]
    return values, [[position[t] for t in row] for row in twice]


class _GeometryCfg(NamedTuple):
    """A stage's resolution handling; with the map size and device, the key of its cached :class:`CpbGeometry`."""
    sr_ratio: int
    fixed_pool_size: Optional[int]
    cpb_mode: str
    trained_size: Tuple[int, int]
    pretrain_size: Tuple[int, int]


def _pool_size(cfg: _GeometryCfg, height: int, width: int) -> Tuple[int, int]:
    if cfg.sr_ratio == 1:
        return height, width
    if cfg.fixed_pool_size is not None:
        return cfg.fixed_pool_size, cfg.fixed_pool_size
    pool = (height // cfg.sr_ratio, width // cfg.sr_ratio)

    def message() -> str:
        return (f'a {height}x{width} map pools to {pool} with sr_ratio {cfg.sr_ratio}: TransNeXt needs every '
                f'aggregated-attention map to be at least {cfg.sr_ratio} on each side (an input of at least '
                f'{4 * cfg.sr_ratio - 3} pixels for the first stage)')

    if is_tracing():  # a runtime check of the traced graph, not a guard that would pin dynamic sizes
        torch._check(pool[0] >= 1, message)
        torch._check(pool[1] >= 1, message)
    elif min(pool) < 1:
        raise ValueError(message())
    return pool


@graph_constant(maxsize=64)
def _stage_geometry(cfg: _GeometryCfg, height: int, width: int, device: torch.device) -> CpbGeometry:
    """Pooled size and CPB coordinates/indices of a stage for a height x width map: cached per configuration, size
    and device in eager mode, computed in the graph (from constants) under torch.compile / torch.export."""
    pool = _pool_size(cfg, height, width)
    cpu = torch.device('cpu')
    axes = []
    for size, p, trained, pretrain in zip((height, width), pool, cfg.trained_size, cfg.pretrain_size):
        if cfg.cpb_mode == 'extrapolate':
            # offsets of the actual map: a traced graph holds them for its (specialised) size
            values, index = _axis(int(size), int(p), pretrain)
            resize = None
        else:
            trained_pool = trained if cfg.sr_ratio == 1 else (cfg.fixed_pool_size or trained // cfg.sr_ratio)
            values, index = _axis(trained, trained_pool, pretrain)
            # a symbolic size (torch.export, dynamic torch.compile) is always resized: at the trained size the resize
            # is the identity, and comparing would pin the size
            symbolic = isinstance(size, torch.SymInt) or isinstance(p, torch.SymInt)
            resize = None if not symbolic and (trained, trained_pool) == (size, p) else (size, p)
        axes.append(_Axis(torch.tensor(values, dtype=torch.float32, device=cpu),
                          torch.tensor(index, dtype=torch.int64, device=cpu), resize))
    ah, aw = axes
    # on the CPU as the original, then moved
    coords = _log_spaced(torch.stack(torch.meshgrid(ah.values, aw.values, indexing='ij'), dim=-1)).to(device)
    out_index = tuple(
        a.index.to(device) if a.resize is None else torch.arange(size * p, device=device).view(size, p)
        for a, size, p in zip(axes, (height, width), pool))
    axes = [_Axis(a.values.to(device), a.index.to(device), a.resize) for a in axes]
    return CpbGeometry(pool, coords, *axes, out_index)


def _linear_resize_matrix(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    """(size_out, size_in): ``F.interpolate(mode='linear')`` (align_corners False) as the matrix it is."""
    eye = torch.eye(size_in, dtype=like.dtype, device=like.device).unsqueeze(0)  # batch 1, channel c = basis c
    return F.interpolate(eye, size=size_out, mode='linear').squeeze(0).t()


def _resize_bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear')`` of a (N, C, h, w) tensor as two matmuls: bilinear resizing is
    separable, and the CPB's thousands of tiny planes run several times faster this way than through
    upsample_bilinear2d (which moves them to channels-last and back)."""
    rows = _linear_resize_matrix(x.shape[-2], size[0], x)
    cols = _linear_resize_matrix(x.shape[-1], size[1], x)
    return rows @ x @ cols.t()


def _log_spaced(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log2(torch.abs(x) + 1.0) / torch.log2(torch.tensor(8, dtype=torch.float32))


# ---- blocks -------------------------------------------------------------------------------------------------------

class ConvolutionalGLU(nn.Module):
    """fc1 to 2 x hidden, the gate half through a 3x3 depthwise conv and GELU, times the value half, fc2 (NHWC)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0., device=None,
                 dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        hidden_features = int(2 * hidden_features / 3)
        self.fc1 = nn.Linear(in_features, hidden_features * 2, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features, **dd)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, v = self.fc1(x).chunk(2, dim=-1)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act(x) * v)
        return self.drop(self.fc2(x))


class _CpbMixin:
    """The continuous position bias MLP (``cpb_fc1`` -> ReLU -> ``cpb_fc2``) and its factored table."""

    def _init_cpb(self, num_heads: int, dd: Dict):
        self.cpb_fc1 = nn.Linear(2, _CPB_HIDDEN, bias=True, **dd)
        self.cpb_fc2 = nn.Linear(_CPB_HIDDEN, num_heads, bias=True, **dd)

    def cpb_table(self, geo: CpbGeometry, dtype: torch.dtype) -> torch.Tensor:
        """(heads, Th', Tw') bias table for ``geo.out_index``: the MLP on the unique offsets, resized per axis where
        the map differs from the trained grid (interpolate mode)."""
        return _cpb_table(geo, self.cpb_fc1.weight, self.cpb_fc1.bias, self.cpb_fc2.weight, self.cpb_fc2.bias, dtype)


@fx_leaf
def _cpb_table(geo: CpbGeometry, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
               fc2_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The CPB MLP (``cpb_fc1`` -> ReLU -> ``cpb_fc2``) on ``geo.coords``, as a (heads, Th', Tw') table (see
    ``_CpbMixin.cpb_table``)."""
    def mlp(c: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(F.linear(c, fc1_weight, fc1_bias), inplace=True), fc2_weight, fc2_bias)

    coords = geo.coords.to(fc1_weight.dtype)
    th, tw = coords.shape[:2]
    rows_per_chunk = max(1, _CPB_CHUNK_ELEMENTS // (tw * _CPB_HIDDEN))
    if torch.is_grad_enabled() or th <= rows_per_chunk:
        table = mlp(coords)
    else:  # inference: bound the (Th, Tw, 512) hidden activations
        table = torch.cat([mlp(c) for c in coords.split(rows_per_chunk)])
    table = table.permute(2, 0, 1).to(dtype)  # (heads, Th, Tw)
    heads = table.shape[0]
    ah, aw = geo.axis_h, geo.axis_w
    if ah.resize is not None:
        # gather the trained (query, key) grid along h, resize it bilinearly as the original's F.interpolate
        t = table[:, ah.index.reshape(-1)].view(heads, *ah.index.shape, table.shape[-1]).permute(0, 3, 1, 2)
        t = _resize_bilinear(t, ah.resize)
        table = t.permute(0, 2, 3, 1).reshape(heads, ah.resize[0] * ah.resize[1], table.shape[-1])
    if aw.resize is not None:
        t = table[:, :, aw.index.reshape(-1)].view(heads, table.shape[1], *aw.index.shape)
        table = _resize_bilinear(t, aw.resize).view(heads, table.shape[1], -1)
    return table


class AggregatedAttention(_CpbMixin, nn.Module):
    """3x3 neighbourhood + pooled keys in one softmax (stages 1-3), fully in ``kernels.neighborhood_attention``."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 3, sr_ratio: int = 8, qkv_bias: bool = True,
                 proj_drop: float = 0., device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        if window_size % 2 != 1:
            raise ValueError(f'window_size must be odd, got {window_size}')
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.window_size, self.sr_ratio = window_size, sr_ratio
        local_len = window_size ** 2

        # softplus(temperature) starts at 1 / 0.24
        self.temperature = nn.Parameter(torch.log((torch.ones(num_heads, 1, 1, **dd) / 0.24).exp() - 1))
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.query_embedding = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim, **dd), mean=0, std=0.02))
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

        self.sr = nn.Conv2d(dim, dim, kernel_size=1, stride=1, padding=0, **dd)
        self.norm = nn.LayerNorm(dim, **dd)  # default eps 1e-5, as the original
        self.act = nn.GELU()
        self._init_cpb(num_heads, dd)

        self.relative_pos_bias_local = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, local_len, **dd), mean=0, std=0.0004))
        self.learnable_tokens = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.head_dim, local_len, **dd), mean=0, std=0.02))
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, local_len, **dd))

    def forward(self, x: torch.Tensor, geo: CpbGeometry) -> torch.Tensor:
        B, H, W, C = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        k, v = self.kv(x).view(B, H, W, 2, heads, head_dim).permute(3, 0, 4, 1, 2, 5)
        # the op takes one dtype: the projections' (under autocast the parameters and normalised vectors are float32)
        dtype = v.dtype
        q = F.normalize(self.q(x).view(B, H, W, heads, head_dim), dim=-1).permute(0, 3, 1, 2, 4).to(dtype)
        k = F.normalize(k, dim=-1).to(dtype)

        # pooled keys and values: 1x1 conv, GELU, adaptive average pool, LayerNorm, the same kv projection
        pooled = F.adaptive_avg_pool2d(self.act(self.sr(x.permute(0, 3, 1, 2))), geo.pool_size)
        pooled = self.norm(pooled.flatten(2).transpose(1, 2))
        k_pool, v_pool = self.kv(pooled).view(B, pooled.shape[1], 2, heads, head_dim).permute(2, 0, 3, 1, 4)

        x = neighborhood_attention(
            q, k, v.to(dtype), self.window_size, rel_pos_bias=self.relative_pos_bias_local.to(dtype),
            extra_k=F.normalize(k_pool, dim=-1).to(dtype), extra_v=v_pool.to(dtype),
            extra_bias_table=self.cpb_table(geo, dtype), extra_bias_index=geo.out_index,
            scale=F.softplus(self.temperature).view(heads).to(dtype), query_embedding=self.query_embedding.to(dtype),
            length_scale=True, learnable_tokens=self.learnable_tokens.to(dtype),
            learnable_bias=self.learnable_bias.to(dtype))
        x = x.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))


class Attention(_CpbMixin, nn.Module):
    """Full attention (stage 4): length-scaled cosine attention with query embedding and the CPB over all tokens.

    Through the neighborhood op: every token is an extra key (the factored CPB is their bias), and the op's window is
    1x1 with a bias of -3e4, so its only key (the query itself, already among the extra keys) gets weight exactly 0:
    cosine logits are bounded by the scale (|q . k| <= 1), far below 100 for any trained temperature, and exp(-3e4 +
    100) underflows to 0 in every float type. A finite value rather than -inf keeps online-softmax backends from
    meeting a window with no finite score (-inf - -inf). The logit scale is ``softplus(temperature) * log(H * W)``,
    as the original's ``seq_length_scale``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0., device=None,
                 dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.temperature = nn.Parameter(torch.log((torch.ones(num_heads, 1, 1, **dd) / 0.24).exp() - 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.query_embedding = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim, **dd), mean=0, std=0.02))
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self._init_cpb(num_heads, dd)

    def forward(self, x: torch.Tensor, geo: CpbGeometry) -> torch.Tensor:
        B, H, W, C = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, H, W, 3, heads, head_dim).permute(3, 0, 4, 1, 2, 5)
        dtype = v.dtype  # the op takes one dtype (see AggregatedAttention)
        q, k = F.normalize(q, dim=-1).to(dtype), F.normalize(k, dim=-1).to(dtype)
        excluded = q.new_full((heads, 1), _EXCLUDED)
        # log(H * W) as a tensor (a traced graph computes it for its size), rounded once from float64 to the
        # temperature's dtype as the Python float it replaces
        log_n = torch.log(torch.full((), H * W, dtype=torch.float64, device=x.device)).to(self.temperature.dtype)
        x = neighborhood_attention(
            q, k, v, 1, rel_pos_bias=excluded,
            extra_k=k.reshape(B, heads, H * W, head_dim), extra_v=v.reshape(B, heads, H * W, head_dim),
            extra_bias_table=self.cpb_table(geo, dtype), extra_bias_index=geo.out_index,
            scale=(F.softplus(self.temperature).view(heads) * log_n).to(dtype),
            query_embedding=self.query_embedding.to(dtype))
        x = x.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))


class TransNeXtBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int = 3, sr_ratio: int = 8, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, proj_drop: float = 0., drop_path: float = 0., norm_eps: float = 1e-6,
                 act_layer=nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        if sr_ratio == 1:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop, **dd)
        else:
            self.attn = AggregatedAttention(dim, num_heads, window_size=window_size, sr_ratio=sr_ratio,
                                            qkv_bias=qkv_bias, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = ConvolutionalGLU(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, geo: CpbGeometry) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), geo))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class TransNeXtStage(nn.Module):
    """Optional downsample (overlapping patch embedding), blocks, the stage's LayerNorm; NCHW in and out.

    Owns the stage's resolution handling: :meth:`geometry` gives the pooled size and the CPB index for a map size."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, num_heads: int, stride: int, downsample: bool = True,
                 window_size: int = 3, sr_ratio: int = 8, mlp_ratio: float = 4., qkv_bias: bool = True,
                 proj_drop: float = 0., drop_path_rates: Optional[List[float]] = None, norm_eps: float = 1e-6,
                 img_size: Tuple[int, int] = (224, 224), pretrain_size: Tuple[int, int] = (224, 224),
                 cpb_mode: str = 'interpolate', fixed_pool_size: Optional[int] = None, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        self.sr_ratio, self.cpb_mode = sr_ratio, cpb_mode
        self.fixed_pool_size = fixed_pool_size if sr_ratio != 1 else None
        self.trained_size = (img_size[0] // stride, img_size[1] // stride)
        self.pretrain_size = (pretrain_size[0] // stride, pretrain_size[1] // stride)
        if min(self.pretrain_size) < 2:
            raise ValueError(f'pretrain_size {pretrain_size} gives a {self.pretrain_size} map at stride {stride}; '
                             f'the CPB normalises offsets by (size - 1), so it needs >= 2 (pretrain_size >= '
                             f'{2 * stride})')
        if self.fixed_pool_size is not None and self.fixed_pool_size >= min(self.trained_size):
            raise ValueError(f'fixed_pool_size {fixed_pool_size} must be less than the shorter side of the stride-'
                             f'{stride} map {self.trained_size} of img_size {img_size}, as the original asserts')
        self.downsample = (
            OverlapPatchEmbed(patch_size=3, stride=2, in_chans=in_chs, embed_dim=out_chs, **dd) if downsample
            else nn.Identity())
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.ModuleList([
            TransNeXtBlock(out_chs, num_heads, window_size=window_size, sr_ratio=sr_ratio, mlp_ratio=mlp_ratio,
                           qkv_bias=qkv_bias, proj_drop=proj_drop, drop_path=drop_path_rates[i], norm_eps=norm_eps,
                           **dd)
            for i in range(depth)])
        self.norm = nn.LayerNorm(out_chs, eps=norm_eps, **dd)

    @property
    def _geometry_cfg(self) -> _GeometryCfg:
        return _GeometryCfg(self.sr_ratio, self.fixed_pool_size, self.cpb_mode, self.trained_size, self.pretrain_size)

    def pool_size(self, height: int, width: int) -> Tuple[int, int]:
        return _pool_size(self._geometry_cfg, height, width)

    def geometry(self, height: int, width: int, device: torch.device) -> CpbGeometry:
        """Pooled size and CPB coordinates/indices for a height x width map (cached per size and device)."""
        return _stage_geometry(self._geometry_cfg, height, width, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x) if isinstance(self.downsample, OverlapPatchEmbed) else x.permute(0, 2, 3, 1)
        geo = self.geometry(x.shape[1], x.shape[2], x.device)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, geo, use_reentrant=False)
            else:
                x = blk(x, geo)
        return self.norm(x).permute(0, 3, 1, 2)


class TransNeXt(StagedModelMixin, nn.Module):
    """TransNeXt.

    Args:
        img_size: The resolution the CPB is laid out for ("trained" resolution). In ``'interpolate'`` mode other sizes
            get the bias resized from this grid, as the authors' detection/segmentation backbone (which they ran with
            ``img_size=800`` on COCO and 512 on ADE20k); at exactly this size the model is the classification model.
        pretrain_size: The pre-training resolution the relative coordinates are normalised by (default ``img_size``;
            224 for every released checkpoint, including the 384x384 fine-tunes).
        cpb_mode: ``'interpolate'`` (default) or ``'extrapolate'`` (CPB evaluated at the actual map size; the
            original's ``is_extrapolation=True``).
        fixed_pool_size: Pool the keys of stages 1-3 to a fixed P x P grid at any input size (the original's "linear
            inference mode", ``--fixed-pool-size``; the paper used 7 for the 224 models). None: (H / sr, W / sr).
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0 for none).
        global_pool: Global pooling type ('' for none: forward returns the NCHW feature map).
        embed_dims: Channels of each stage.
        num_heads: Attention heads of each stage.
        mlp_ratios: MLP hidden width over channels, per stage (the GLU then uses 2/3 of it).
        depths: Blocks in each stage.
        sr_ratios: Pooling ratio of the aggregated attention per stage; 1 = full attention.
        window_size: The local window of the aggregated attention (an int or one per stage).
        qkv_bias: Biases on the q/kv/qkv projections.
        norm_eps: Epsilon of the block and stage LayerNorms (the patch embeddings and the pooled-key norm keep
            PyTorch's default 1e-5, as the original).
        drop_rate: Dropout before the classifier (timm's meaning; the original's ``drop_rate`` is the projection and
            MLP dropout, here ``proj_drop_rate``).
        proj_drop_rate: Dropout after the attention projection and in the MLP.
        drop_path_rate: Stochastic depth rate, increasing linearly over all blocks.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            pretrain_size: Optional[Union[int, Tuple[int, int]]] = None,
            cpb_mode: str = 'interpolate',
            fixed_pool_size: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (48, 96, 192, 384),
            num_heads: Tuple[int, ...] = (2, 4, 8, 16),
            mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4),
            depths: Tuple[int, ...] = (2, 2, 15, 2),
            sr_ratios: Tuple[int, ...] = (8, 4, 2, 1),
            window_size: Union[int, Sequence[Optional[int]]] = 3,
            qkv_bias: bool = True,
            norm_eps: float = 1e-6,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        num_stages = len(embed_dims)
        if not len(num_heads) == len(mlp_ratios) == len(depths) == len(sr_ratios) == num_stages:
            raise ValueError(
                f'embed_dims, num_heads, mlp_ratios, depths and sr_ratios need one entry per stage, got '
                f'{len(embed_dims)}, {len(num_heads)}, {len(mlp_ratios)}, {len(depths)} and {len(sr_ratios)}')
        if cpb_mode not in _CPB_MODES:
            raise ValueError(f'cpb_mode must be one of {_CPB_MODES}, got {cpb_mode!r}')
        window_sizes = [window_size] * num_stages if isinstance(window_size, int) else list(window_size)
        img_size = to_2tuple(img_size)
        pretrain_size = to_2tuple(pretrain_size or img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.img_size, self.pretrain_size = img_size, pretrain_size
        self.cpb_mode, self.fixed_pool_size = cpb_mode, fixed_pool_size
        self.grad_checkpointing = False

        self.stem = OverlapPatchEmbed(patch_size=7, stride=4, in_chans=in_chans, embed_dim=embed_dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stride = 2 ** (i + 2)
            stages.append(TransNeXtStage(
                embed_dims[i - 1] if i else embed_dims[0],
                embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                stride=stride,
                downsample=i > 0,
                window_size=window_sizes[i] or 3,
                sr_ratio=sr_ratios[i],
                mlp_ratio=mlp_ratios[i],
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                drop_path_rates=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                norm_eps=norm_eps,
                img_size=img_size,
                pretrain_size=pretrain_size,
                cpb_mode=cpb_mode,
                fixed_pool_size=fixed_pool_size,
                **dd,
            ))
            self.feature_info += [dict(num_chs=embed_dims[i], reduction=stride, module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        for m in self.modules():  # as the original, after construction (so it also re-initialises the CPB MLPs)
            init_pvt_weights(m)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # the original exempts parameters by keyword (no_weight_decay_keywords); timm wants the full names
        keywords = ('query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature')
        return {n for n, _ in self.named_parameters() if any(k in n for k in keywords)}

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).permute(0, 3, 1, 2)  # NHWC -> NCHW view; stage 0 takes it back without a copy


# non-persistent buffers of the original; older exports of the classification model may carry them
_ORIGINAL_BUFFERS = re.compile(r'(relative_pos_index\d|relative_coords_table\d|seq_length_scale|padding_mask)$')


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Optional[TransNeXt]) -> Dict[str, torch.Tensor]:
    """Map an original TransNeXt checkpoint onto this model's keys.

    The released files (``transnext_*_224_1k.pth``, ``transnext_*_384_1k_ft_1k.pth``) are flat state dicts of the
    classification model; the training script's checkpoints nest it under ``model``. Original keys:
    ``patch_embed{1-4}.{proj,norm}``, ``block{1-4}.{j}.{norm1,attn,norm2,mlp}``, ``norm{1-4}``, ``head``; the
    attention parameters keep their names and shapes. The authors' detection/segmentation checkpoints hold the same
    backbone keys under ``backbone.`` (plus the heads); those are taken too. A state dict already in this model's
    format (``stem.proj.weight``) passes through unchanged.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.proj.weight' in state_dict:
        return state_dict
    if 'backbone.patch_embed1.proj.weight' in state_dict:
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    return {rename_pvt_key(k): v for k, v in state_dict.items() if not _ORIGINAL_BUFFERS.search(k)}


def _create_transnext(variant: str, pretrained: bool = False, **kwargs) -> TransNeXt:
    return build_model_with_cfg(
        TransNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    # the authors' evaluation: bicubic resize to 256/224 of the size and centre crop (crop_pct 0.875) below 384,
    # a bicubic warp to the size (no crop) at 384
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2311.17132',
        'paper_name': 'TransNeXt: Robust Foveal Visual Perception for Vision Transformers',
        'origin_url': 'https://github.com/DaiShiResearch/TransNeXt',
        **kwargs,
    }


def _cfg_384(**kwargs) -> Dict:
    return _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode='squash', **kwargs)


default_cfgs = generate_default_cfgs({
    'zoo_transnext_micro.official_in1k': _cfg(
        hf_hub_id='DaiShiResearch/transnext-micro-224-1k', hf_hub_filename='transnext_micro_224_1k.pth'),
    'zoo_transnext_tiny.official_in1k': _cfg(
        hf_hub_id='DaiShiResearch/transnext-tiny-224-1k', hf_hub_filename='transnext_tiny_224_1k.pth'),
    'zoo_transnext_small.official_in1k': _cfg(
        hf_hub_id='DaiShiResearch/transnext-small-224-1k', hf_hub_filename='transnext_small_224_1k.pth'),
    'zoo_transnext_base.official_in1k': _cfg(
        hf_hub_id='DaiShiResearch/transnext-base-224-1k', hf_hub_filename='transnext_base_224_1k.pth'),
    'zoo_transnext_small_384.official_in1k': _cfg_384(
        hf_hub_id='DaiShiResearch/transnext-small-384-1k-ft-1k', hf_hub_filename='transnext_small_384_1k_ft_1k.pth'),
    'zoo_transnext_base_384.official_in1k': _cfg_384(
        hf_hub_id='DaiShiResearch/transnext-base-384-1k-ft-1k', hf_hub_filename='transnext_base_384_1k_ft_1k.pth'),
})

# sha256 of the LFS objects, from the Hugging Face file pages / upload commits (none found for the tiny file)
register_sha256s({
    'hf-hub:DaiShiResearch/transnext-micro-224-1k/transnext_micro_224_1k.pth':
        '18dbc88e9c1eb3b3f7801f91f61ef25db56a276a2ee85c4ae3e940c832410d8f',
    'hf-hub:DaiShiResearch/transnext-small-224-1k/transnext_small_224_1k.pth':
        '92cc70c6e75aeb4a1bcc6c249d634b3636c24752228cd3e2220c2d58183ecfba',
    'hf-hub:DaiShiResearch/transnext-base-224-1k/transnext_base_224_1k.pth':
        '1d3b9e5c159b61f162bfaaea5887552d04f6b92af83e0e798f682f9d35f53272',
    'hf-hub:DaiShiResearch/transnext-small-384-1k-ft-1k/transnext_small_384_1k_ft_1k.pth':
        'fb11178d2f4abd37054760d7659c299ddc756f2c0c9f2f7895796c294d7b740e',
    'hf-hub:DaiShiResearch/transnext-base-384-1k-ft-1k/transnext_base_384_1k_ft_1k.pth':
        'b48d494bd6b675745ed521a8a68a427aaf54d492028706598dad0ce047e4e9cd',
})



@register_model
def zoo_transnext_micro(pretrained: bool = False, **kwargs) -> TransNeXt:
    model_args = dict(embed_dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16), depths=(2, 2, 15, 2))
    return _create_transnext('zoo_transnext_micro', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_transnext_tiny(pretrained: bool = False, **kwargs) -> TransNeXt:
    model_args = dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(2, 2, 15, 2))
    return _create_transnext('zoo_transnext_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_transnext_small(pretrained: bool = False, **kwargs) -> TransNeXt:
    model_args = dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(5, 5, 22, 5))
    return _create_transnext('zoo_transnext_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_transnext_base(pretrained: bool = False, **kwargs) -> TransNeXt:
    model_args = dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), depths=(5, 5, 23, 5))
    return _create_transnext('zoo_transnext_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_transnext_small_384(pretrained: bool = False, **kwargs) -> TransNeXt:
    model_args = dict(
        embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(5, 5, 22, 5),
        img_size=384, pretrain_size=224)
    return _create_transnext('zoo_transnext_small_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_transnext_base_384(pretrained: bool = False, **kwargs) -> TransNeXt:
    model_args = dict(
        embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), depths=(5, 5, 23, 5),
        img_size=384, pretrain_size=224)
    return _create_transnext('zoo_transnext_base_384', pretrained=pretrained, **dict(model_args, **kwargs))
