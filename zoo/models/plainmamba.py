"""PlainMamba: a plain (non-hierarchical) Mamba backbone with continuous 2-D zig-zag scans.

Paper: `PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition` - https://arxiv.org/abs/2403.17695
(arXiv:2403.17695, BMVC 2024)
Original code: https://github.com/ChenhongyiYang/PlainMamba (Apache-2.0; an mmclassification 0.x code base)
Original ImageNet-1k weights: Hugging Face `ChenhongyiYang/PlainMamba` (`l1.pth`, `l2.pth`, `l3.pth`), published by
the authors beside their Apache-2.0 code.

A conv stem (7x7/2 conv, BN, ReLU, then 3x3 convs, BN, ReLU at 64 channels, zero padding at the bottom/right up to a
multiple of 8 as mmcv 1.x's ``AdaptivePadding('corner')``, and an 8x8/8 conv: stride 16), a learned position
embedding, and a stack of identical blocks on one stride-16 map: LayerNorm -> mixer -> residual add (L1 then runs
its layer 0's stream through a 3x3 depthwise conv + BN + GELU). The mixer is Mamba's with a 7x7 depthwise 2-D conv
and four selective scans over the map along continuous zig-zag paths (row-wise from the top-left, the same path
reversed, column-wise from the top-left, reversed), which share every parameter except a learned offset added to B
that says from which direction each step arrives (``direction_Bs``: start, right, left, up, down). Each scan adds
D * u; the four outputs are summed and gated by silu(z). The four scans are one multi-order call of
``kernels.selective_scan``: nothing is gathered, flipped or copied per scan.

Released-weight quirks (``released_quirks=True``, the default; the released weights were trained with them):

* only u is permuted into each scan's order: delta, B and C are read at the step index t in raster order (position
  t of the map, not the position the scan visits at step t), while the direction offsets are added to B in scan
  order (the offset of step t to the B of raster position t);
* the dt_proj bias is applied twice: by the Linear and again as the scan's ``delta_bias``.

With ``released_quirks=False`` the model computes what the paper describes: delta, B and C are read at the position
each scan visits (``gather_params=True``), B there gets the offset of the direction that scan arrives from, and the
dt_proj bias is applied once. The released weights do not fit that math; it is for training from scratch.
"""
import itertools
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from kernels import selective_scan
from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import graph_constant, pad_bottom_right, pad_to_multiple, resample_pos_embed

__all__ = ['PlainMamba']

NUM_DIRECTIONS = 5  # the B offsets: start, right, left, up, down


@graph_constant(maxsize=32)
def scan_tables(H: int, W: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PlainMamba's four continuous zig-zag scans over an H x W map (as its ``get_permute_order``).

    Returns three (4, H*W) int64 tables: ``orders[k, t]``, the raster position scan k visits at step t;
    ``step_dirs[k, t]``, the direction scan k arrives from at step t (0 start, 1 right, 2 left, 3 up, 4 down);
    ``pos_dirs[k, p]``, the same direction stored at the position p visited. Built once per shape and device (every
    block and call shares them), in the graph under torch.compile / torch.export.
    """
    grid = torch.arange(H * W, device=device).view(H, W)
    rows = grid.clone()
    rows[1::2] = rows[1::2].flip(-1)  # boustrophedon: even rows left to right, odd rows right to left
    cols = grid.t().clone()
    cols[1::2] = cols[1::2].flip(-1)
    by_row, by_col = rows.flatten(), cols.flatten()
    # the second and fourth scans start where the first and third end: each is the other one reversed
    orders = torch.stack([by_row, by_row.flip(0), by_col, by_col.flip(0)])
    row = orders // W
    col = orders - row * W  # not `orders % W`: ONNX export takes no remainder by a symbolic width
    dr, dc = row.diff(dim=1), col.diff(dim=1)
    moves = torch.where(dc > 0, 1, torch.where(dc < 0, 2, torch.where(dr < 0, 3, 4)))
    step_dirs = torch.cat([torch.zeros_like(orders[:, :1]), moves], dim=1)
    pos_dirs = torch.empty_like(step_dirs).scatter_(1, orders, step_dirs)
    return orders, step_dirs, pos_dirs


def _dense_state(module: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str, local_metadata) -> None:
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


class ConvStem(nn.Module):
    """7x7/2 conv-BN-ReLU, ``num_convs`` 3x3 conv-BN-ReLU at ``stem_chs``, zero padding at the bottom/right up to a
    multiple of the projection stride (mmcv's 'corner' AdaptivePadding), then a (patch/2)x(patch/2) conv at stride
    patch/2. Returns NCHW at stride ``patch_size``."""

    def __init__(
            self,
            in_chans: int,
            embed_dim: int,
            num_convs: int = 1,
            patch_size: int = 16,
            stem_chs: int = 64,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if patch_size % 2:
            raise ValueError(f'patch_size must be even (a stride-2 conv, then a patch_size/2 conv), got {patch_size}')
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False, **dd),
            nn.BatchNorm2d(stem_chs, **dd),
            nn.ReLU(inplace=True),
        )
        convs = []
        for _ in range(num_convs):
            convs += [
                nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False, **dd),
                nn.BatchNorm2d(stem_chs, **dd),
                nn.ReLU(inplace=True),
            ]
        self.convs = nn.Sequential(*convs)
        self.proj = nn.Conv2d(stem_chs, embed_dim, patch_size // 2, stride=patch_size // 2, **dd)
        # the convolutions' weights channels-last too (see forward): oneDNN reorders NCHW weights on every call; the
        # state dict stays dense (safetensors and other savers refuse strided tensors)
        self.to(memory_format=torch.channels_last)
        self.register_state_dict_post_hook(_dense_state)

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """The (H, W) of the output map for an input of ``img_size``."""
        s = self.proj.stride[0]
        return tuple(math.ceil(math.ceil(x / 2) / s) for x in img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer by layer, so that each map is freed as soon as the next one exists (at 1024 px every map here is
        # 64 MiB; nesting the two Sequentials kept the first one's output alive through the second). Channels-last
        # maps: oneDNN's convolutions run them about 3x faster on the CPU than NCHW ones (22.6 vs 7.7 ms for L2 at
        # 224), and the NHWC token map the blocks take is then a view of the output
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in itertools.chain(self.stem, self.convs):
            x = layer(x)
        s = self.proj.stride[0]
        return self.proj(pad_bottom_right(x, pad_to_multiple(x.shape[-2], s), pad_to_multiple(x.shape[-1], s)))


def _check_pool(global_pool: str) -> None:
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool must be 'avg' (mean of the tokens) or '' (none), got {global_pool!r}")


class PlainMambaMixer(nn.Module):
    """PlainMamba's 2-D Mamba mixer on an NHWC map (the original's ``PlainMamba2D``)."""

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            conv_size: int = 7,
            bias: bool = True,
            conv_bias: bool = True,
            released_quirks: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if conv_size % 2 != 1:
            raise ValueError(f'conv_size must be odd (a same-size depthwise conv), got {conv_size}')
        self.d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.released_quirks = released_quirks

        self.in_proj = nn.Linear(dim, self.d_inner * 2, bias=bias, **dd)
        self.conv2d = nn.Conv2d(
            self.d_inner, self.d_inner, conv_size, padding=conv_size // 2, groups=self.d_inner, bias=conv_bias, **dd)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)
        # S4D-real A and the skip D, kept in float32 (as Mamba)
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).expand(self.d_inner, -1)
        self.A_log = nn.Parameter(torch.log(A).contiguous())
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias, **dd)
        # B offsets by the direction a step arrives from
        self.direction_Bs = nn.Parameter(torch.zeros(NUM_DIRECTIONS, d_state, **dd))
        trunc_normal_(self.direction_Bs, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, H, W, _ = x.shape
        w_u, w_z = self.in_proj.weight.chunk(2)
        b_u, b_z = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        # u dense channels-last (the depthwise conv's fast layout), z channel-major (the scan's): no copies
        u = F.linear(x, w_u, b_u)                                              # (b, H, W, E)
        z = torch.matmul(w_z, x.flatten(1, 2).transpose(1, 2))                 # (b, E, L)
        z = z if b_z is None else z + b_z[:, None]
        u = self.act(self.conv2d(u.permute(0, 3, 1, 2))).flatten(2)            # (b, E, L), raster order
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2)                               # (b, E, L), dt_proj bias applied
        orders, step_dirs, pos_dirs = scan_tables(H, W, x.device)
        if self.released_quirks:
            # delta, B, C read at the step index; the offset of step t goes to the B of index t; bias again
            offsets, delta_bias = self.direction_Bs[step_dirs], self.dt_proj.bias.float()[None]
        else:
            # delta, B, C read where each scan is; the offset of the step that visits p goes to the B of p
            offsets, delta_bias = self.direction_Bs[pos_dirs], None
        B = B.transpose(1, 2)[:, None] + offsets.transpose(1, 2).to(B.dtype)  # (b, 4, n, L): one B per scan
        y = selective_scan(
            u[:, None], delta[:, None], -torch.exp(self.A_log.float())[None], B, C.transpose(1, 2)[:, None],
            self.D.float()[None], z=z, delta_bias=delta_bias, delta_softplus=True,
            orders=orders, gather_params=not self.released_quirks)              # (b, E, L): 4 scans summed, gated
        y = self.out_proj(y.transpose(1, 2))
        return y.view(b, H, W, y.shape[-1])


class PlainMambaBlock(nn.Module):
    """LayerNorm -> mixer -> residual add, on an NHWC map; optionally then a 3x3 depthwise conv + BN + GELU that
    replaces the stream (PlainMamba-L1's layer 0)."""

    def __init__(
            self,
            dim: int,
            with_dwconv: bool = False,
            drop_path: float = 0.,
            norm_eps: float = 1e-5,
            device=None,
            dtype=None,
            **mixer_kwargs,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mixer = PlainMambaMixer(dim, **mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if with_dwconv:
            self.dw = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd),
                nn.BatchNorm2d(dim, **dd),
                nn.GELU(),
            )
        else:
            self.dw = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm(x)))
        if self.dw is not None:
            x = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class PlainMamba(nn.Module):
    """PlainMamba: a conv stem and a stack of 2-D Mamba blocks on one stride-16 map.

    Args:
        img_size: Input size the position embedding is laid out for (other sizes resize it, bicubic).
        patch_size: Total stride of the stem (a stride-2 conv, then a patch_size/2 conv).
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0 for none).
        global_pool: 'avg' (mean of the tokens, as the original's neck) or '' (forward returns the (B, L, C) tokens).
        embed_dim: Channels of the token map.
        depth: Number of blocks.
        stem_convs: 3x3 conv-BN-ReLU layers in the stem after the 7x7 conv (L1: 1, L2/L3: 2).
        dw_layers: Blocks followed by a 3x3 depthwise conv + BN + GELU (L1: block 0).
        d_state: State size n of the selective scan.
        expand: Mixer width over embed_dim.
        dt_rank: Rank of the step-size projection ('auto': ceil(embed_dim / 16)).
        conv_size: Kernel of the mixer's depthwise 2-D conv.
        released_quirks: Reproduce the released weights' scan (see the module docstring); False for the paper's
            math.
        norm_eps: Epsilon of the blocks' LayerNorms.
        final_norm_eps: Epsilon of the final LayerNorm (the original ``ln1``).
        drop_rate: Dropout before the classifier.
        pos_drop_rate: Dropout after the position embedding.
        drop_path_rate: Stochastic depth rate, increasing linearly over the blocks.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 24,
            stem_convs: int = 1,
            dw_layers: Sequence[int] = (),
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            conv_size: int = 7,
            released_quirks: bool = True,
            norm_eps: float = 1e-5,
            final_norm_eps: float = 1e-6,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        bad = [i for i in dw_layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f'dw_layers must index blocks 0..{depth - 1}, got {list(dw_layers)}')
        _check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.released_quirks = released_quirks
        self.grad_checkpointing = False

        self.patch_embed = ConvStem(in_chans, embed_dim, num_convs=stem_convs, patch_size=patch_size, **dd)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_grid = self.patch_embed.dynamic_feat_size(img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_grid[0] * self.patch_grid[1], embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace(0, rate, depth)
        self.blocks = nn.Sequential(*[
            PlainMambaBlock(
                embed_dim,
                with_dwconv=i in dw_layers,
                drop_path=dpr[i],
                norm_eps=norm_eps,
                d_state=d_state,
                expand=expand,
                dt_rank=dt_rank,
                conv_size=conv_size,
                released_quirks=released_quirks,
                **dd,
            )
            for i in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=final_norm_eps, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        # as the authors' training config (mmcv TruncNormal on every Linear, bias 0), which also replaces Mamba's
        # own dt_proj init
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^pos_embed|^patch_embed',
            blocks=r'^blocks\.(\d+)' if coarse else [(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # as the authors' optimizer config: pos_embed, A_log, D and direction_Bs are not decayed
        names = {'pos_embed'}
        for i in range(len(self.blocks)):
            names |= {f'blocks.{i}.mixer.{p}' for p in ('A_log', 'D', 'direction_Bs')}
        return names

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        device, dtype = self.pos_embed.device, self.pos_embed.dtype
        self.head = nn.Linear(self.embed_dim, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add the position embedding to an NHWC map, resized (bicubic, as mmcls' resize_pos_embed) to its grid."""
        H, W = x.shape[1:3]
        pos = resample_pos_embed(self.pos_embed, (H, W), self.patch_grid, num_prefix_tokens=0, antialias=False)
        return self.pos_drop(x + pos.view(1, H, W, pos.shape[-1]))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._pos_embed(self.patch_embed(x).permute(0, 2, 3, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised tokens (B, L, C) in raster order of the stride-16 map."""
        x = self._stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x.flatten(1, 2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs (the residual stream) at stride 16, as the authors' dense backbones take them.

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n blocks if int, all if None, the listed blocks if a sequence.
            norm: Apply the final LayerNorm to every intermediate (the authors' dense configs put a new LayerNorm
                on each instead, trained downstream, and the final one on the last block).
            stop_early: Stop after the last block needed.
            output_fmt: 'NCHW' or 'NLC' (tokens, as timm's ViTs).
            intermediates_only: Only return the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._stem(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else y.flatten(1, 2))
        if intermediates_only:
            return intermediates
        return self.norm(x.flatten(1, 2)), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def _rename_original_key(k: str) -> str:
    k = re.sub(r'^backbone\.', '', k)
    k = re.sub(r'^layers\.(\d+)\.mamba\.', r'blocks.\1.mixer.', k)
    k = re.sub(r'^layers\.', 'blocks.', k)
    k = re.sub(r'^ln1\.', 'norm.', k)
    k = re.sub(r'^head\.fc\.', 'head.', k)
    return k.replace('patch_embed.projection.', 'patch_embed.proj.')


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Optional[PlainMamba]) -> Dict[str, torch.Tensor]:
    """Map an original PlainMamba checkpoint onto this model.

    The released files are mmclassification checkpoints: ``{'meta': ..., 'state_dict': {'backbone.patch_embed...',
    'backbone.layers.N.mamba...', 'backbone.ln1...', 'head.fc...'}}``; a flat state dict (with or without the
    ``backbone.`` prefix) and this model's own format load too. ``head.fc`` becomes ``head``. Top-level ``ema_*``
    entries (buffers the authors' EMACheckpointHook registers, holding the non-EMA weights while the parameters
    hold the EMA ones that were evaluated) are dropped. The position embedding is resized to the model's grid when
    they differ.
    """
    state_dict = unwrap_state_dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith('ema_'):
            continue
        k = _rename_original_key(k)
        if k == 'pos_embed' and model is not None and v.shape[1] != model.pos_embed.shape[1]:
            side = math.isqrt(v.shape[1])
            if side * side != v.shape[1]:
                raise ValueError(f'pos_embed of the checkpoint has {v.shape[1]} positions, not a square grid')
            v = resample_abs_pos_embed(v, model.patch_grid, (side, side), num_prefix_tokens=0, antialias=False)
        out[k] = v
    return out


def _dense_out_indices(depth: int) -> Tuple[int, ...]:
    """The blocks the authors' detection / segmentation configs take: the end of each quarter of the depth."""
    return tuple(sorted({max(0, depth * (i + 1) // 4 - 1) for i in range(4)}))


def _create_plainmamba(variant: str, pretrained: bool = False, **kwargs) -> PlainMamba:
    depth = kwargs.get('depth', 24)
    return build_model_with_cfg(
        PlainMamba,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=_dense_out_indices(depth), feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict:
    # the authors' test pipeline: resize the short side to 256 (bicubic, pillow), centre crop 224, ImageNet mean/std
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.stem.0', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2403.17695',
        'paper_name': 'PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition',
        'origin_url': 'https://github.com/ChenhongyiYang/PlainMamba',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'zoo_plainmamba_l1.official_in1k': _cfg(hf_hub_id='ChenhongyiYang/PlainMamba', hf_hub_filename='l1.pth'),
    'zoo_plainmamba_l2.official_in1k': _cfg(hf_hub_id='ChenhongyiYang/PlainMamba', hf_hub_filename='l2.pth'),
    'zoo_plainmamba_l3.official_in1k': _cfg(hf_hub_id='ChenhongyiYang/PlainMamba', hf_hub_filename='l3.pth'),
})
# No sha256 is registered: no public record of the three files' LFS digests could be found.


@register_model
def zoo_plainmamba_l1(pretrained: bool = False, **kwargs) -> PlainMamba:
    model_args = dict(embed_dim=192, depth=24, stem_convs=1, dw_layers=(0,))
    return _create_plainmamba('zoo_plainmamba_l1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_plainmamba_l2(pretrained: bool = False, **kwargs) -> PlainMamba:
    model_args = dict(embed_dim=384, depth=24, stem_convs=2)
    return _create_plainmamba('zoo_plainmamba_l2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_plainmamba_l3(pretrained: bool = False, **kwargs) -> PlainMamba:
    model_args = dict(embed_dim=448, depth=36, stem_convs=2)
    return _create_plainmamba('zoo_plainmamba_l3', pretrained=pretrained, **dict(model_args, **kwargs))
