"""Vim: Vision Mamba, bidirectional state-space blocks on a plain patch sequence.

Paper: `Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model`
- https://arxiv.org/abs/2401.09417 (arXiv:2401.09417, ICML 2024)
Original code: https://github.com/hustvl/Vim (Apache-2.0; ``vim/models_mamba.py`` and its fork of mamba_ssm 1.1.1,
``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``)
Weights: the authors' ImageNet-1k checkpoints on the Hugging Face hub, ``hustvl/Vim-{tiny,small,base}-midclstok``
(Apache-2.0 per their model cards): the 224 models, and for tiny and small also the stride-8 fine-tuned "+" models.

An isotropic model: a 16x16 patch embedding (stride 16, or 8 for the "+" models), a class token inserted in the middle
of the token sequence (index M // 2 of the M patch tokens, before the position embedding is added, so it takes the
middle position), 24 blocks, and a final RMSNorm; the head reads the class token. Each block is Mamba's
"add -> RMSNorm -> mixer" block: the residual stream is kept in float32, the block adds the previous mixer output to
it (with stochastic depth), normalises it (RMSNorm, eps 1e-5) and runs the mixer; the final features are
``norm_f(residual + last mixer output)``.

The mixer is the released "bimamba v2": one ``in_proj`` (x and the gate z), then two directions with their own
depthwise causal conv1d, ``x_proj``, ``dt_proj``, A and D; the backward direction runs on the whole flipped ``xz`` (the
gate included), and the two gated outputs are summed, halved (``if_divide_out``) and projected by one ``out_proj``.
Both directions go through one multi-order ``kernels.selective_scan`` call (orders: the sequence and its reverse),
so nothing is flipped in memory: a causal conv of the flipped sequence is an anti-causal conv of the sequence, and
the per-token projections commute with the flip. D is added inside each direction, the gate z is shared.

Dense features (``forward_intermediates``, ``features_only``): stride-16 (or 8) NCHW maps of the patch tokens (the
class token removed) taken from a block's *mixer output*, as the authors' segmentation backbone does
(``seg/backbone/vim.py``, ``use_residual_as_feature=False``, ``out_indices=[5, 11, 17, 23]``), which is also the
default ``out_indices`` of ``features_only``. With ``norm=True`` an intermediate is instead the normalised residual
stream after that block, ``norm_f(residual + mixer output)`` (what the final features are after the last block).

Any input size: the image is zero-padded at the bottom and right to the next size the patch embedding tiles exactly
(a multiple of 16 for stride 16), and the patch part of the position embedding is resampled (bicubic, timm's
``resample_abs_pos_embed``) to the new grid; the class token keeps its own position.
"""
import math
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, RmsNorm, lecun_normal_, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from kernels import selective_scan
from zoo.hub import build_model_with_cfg, register_sha256s, unwrap_state_dict
from zoo.layers import fx_leaf, graph_constant, pad_bottom_right, resample_pos_embed

__all__ = ['Vim']

# The authors evaluate (and fine-tune from) 'model'; their checkpoints also hold 'model_ema', which is not what the
# reported accuracies were measured on.
STATE_DICT_KEYS = ('model', 'state_dict')


class VimPatchEmbed(nn.Module):
    """Conv patch embedding (kernel ``patch_size``, stride ``stride``: overlapping when stride < patch) that takes any
    image size: the image is zero-padded at the bottom and right to the next size the kernel tiles exactly."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            embed_dim: int = 192,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if stride > patch_size:
            raise ValueError(f'stride ({stride}) larger than patch_size ({patch_size}) would skip pixels')
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, device=device, dtype=dtype)

    def _padded(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(_tiled_size(s, p, st) for s, p, st in zip(size, self.patch_size, self.stride))

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """The token grid (rows, columns) of an image of ``img_size`` (after the padding)."""
        return tuple((s - p) // st + 1 for s, p, st in zip(self._padded(img_size), self.patch_size, self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, embed_dim, rows, columns)."""
        return self.proj(_pad_to_tiling(x, self.in_chans, self.patch_size, self.stride))


def _tiled_size(size: int, patch: int, stride: int) -> int:
    """The smallest size >= ``size`` that the kernel tiles exactly (the ceiling division written as a floor division
    of a non-negative number, which symbolic shapes and ONNX export take as it is)."""
    return patch + (size - patch + stride - 1) // stride * stride if size >= patch else patch


@fx_leaf
def _pad_to_tiling(x: torch.Tensor, in_chans: int, patch_size: Tuple[int, int],
                   stride: Tuple[int, int]) -> torch.Tensor:
    """Check the images and zero-pad them at the bottom and right to the next size the patch kernel tiles exactly."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f'expected images (B, {in_chans}, H, W), got shape {tuple(x.shape)}')
    H, W = x.shape[-2:]
    pad_h, pad_w = _tiled_size(H, patch_size[0], stride[0]) - H, _tiled_size(W, patch_size[1], stride[1]) - W
    return pad_bottom_right(x, pad_h, pad_w)


@graph_constant(maxsize=64)
def _bidirectional_orders(length: int, device: torch.device) -> torch.Tensor:
    """(2, L): the token order and its reverse; cached (so the op checks each table once), built in the graph under
    torch.compile / torch.export (where the length may be symbolic)."""
    forward = torch.arange(length, device=device)
    return torch.stack((forward, forward.flip(0)))


class BiMambaMixer(nn.Module):
    """Vim's bidirectional Mamba mixer ("bimamba v2"), with the original's parameter names.

    ``in_proj`` and ``out_proj`` are shared; ``conv1d``/``x_proj``/``dt_proj``/``A_log``/``D`` serve the forward
    direction and their ``_b`` twins the backward one, which reads the sequence (x and the gate z) reversed.
    """
    # elements (tokens * channels) of one direction's channel slice per image: longer sequences run in slices
    chunk_elements: int = 1 << 18

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            conv_bias: bool = True,
            bias: bool = False,
            divide_out: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.divide_out = divide_out

        self.in_proj = nn.Linear(dim, d_inner * 2, bias=bias, **dd)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, padding=d_conv - 1, groups=d_inner, bias=conv_bias, **dd)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(d_inner, device=device, dtype=torch.float32))
        self.A_b_log = nn.Parameter(torch.empty(d_inner, d_state, device=device, dtype=torch.float32))
        self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, padding=d_conv - 1, groups=d_inner, bias=conv_bias, **dd)
        self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True, **dd)
        self.D_b = nn.Parameter(torch.empty(d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(d_inner, dim, bias=bias, **dd)
        self.init_weights(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def init_weights(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        """Mamba's init as the original runs it: dt_proj uniform in +-dt_rank^-0.5 with a bias that puts
        softplus(bias) log-uniformly in [dt_min, dt_max]; S4D-real A = 1..n, D = 1 for both directions. The original
        gives the backward twin PyTorch's default Linear init, whose weight range is the same, and its model-wide init
        then zeroes dt_proj_b's bias (it only exempts the forward one): reproduced."""
        if self.A_log.is_meta:
            return
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        nn.init.zeros_(self.dt_proj_b.bias)
        A_log = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1)
        self.A_log.copy_(A_log)
        self.A_b_log.copy_(A_log)
        nn.init.ones_(self.D)
        nn.init.ones_(self.D_b)

    def _conv_silu(self, x: torch.Tensor, channels: slice) -> torch.Tensor:
        """u of both directions for a slice of the channels: (B, d, L) -> (B, 2, |channels|, L). The backward
        direction's causal conv on the reversed sequence is an anti-causal conv with the kernel reversed."""
        L, pad = x.shape[-1], self.d_conv - 1
        x = x[:, channels]
        out = []
        for conv, flip in ((self.conv1d, False), (self.conv1d_b, True)):
            weight = conv.weight[channels]
            bias = None if conv.bias is None else conv.bias[channels]
            y = F.conv1d(x, weight.flip(-1) if flip else weight, bias, padding=pad, groups=x.shape[1])
            out.append(y[..., pad:] if flip else y[..., :L])
        return F.silu(torch.stack(out, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) -> (B, L, dim).

        Long sequences run in slices of the inner channels (at most ``chunk_elements`` tokens * channels per image
        and direction), every step but x_proj being per channel: x_proj's sum over the channels is accumulated
        slice by slice, then each slice's u is recomputed (a 4-tap depthwise conv), scanned, gated and projected,
        so no full-width u, delta or scan temporaries exist at once. Short ones take one slice (no recomputation).
        """
        L, d = x.shape[1], self.d_inner
        w_x, w_z = self.in_proj.weight.chunk(2)
        b_x, b_z = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        xt = x.transpose(1, 2)  # (B, dim, L): the projections below come out channel-major, as conv and scan read them
        hx = torch.matmul(w_x, xt) if b_x is None else torch.matmul(w_x, xt) + b_x[:, None]
        # one slice under FX tracing and torch.export (a slice count would pin the traced length)
        single = isinstance(x, torch.fx.Proxy) or torch.compiler.is_exporting()
        n = 1 if single else max(1, min(d, math.ceil(L * d / self.chunk_elements)))
        slices = [slice(d * i // n, d * (i + 1) // n) for i in range(n)]

        w_xp = torch.stack((self.x_proj.weight, self.x_proj_b.weight))  # (2, R, d_inner)
        x_dbl, u = 0, None
        for c in slices:
            u = self._conv_silu(hx, c)
            x_dbl = x_dbl + torch.matmul(w_xp[:, :, c], u)          # (B, 2, R, L)
        dt, B, C = x_dbl.split((self.dt_rank, self.d_state, self.d_state), dim=2)

        w_dt = torch.stack((self.dt_proj.weight, self.dt_proj_b.weight))  # (2, d_inner, R_dt)
        A = -torch.exp(torch.stack((self.A_log, self.A_b_log)).float())
        D = torch.stack((self.D, self.D_b)).float()
        delta_bias = torch.stack((self.dt_proj.bias, self.dt_proj_b.bias)).float()
        orders = _bidirectional_orders(L, x.device)
        out = None
        for c in slices:
            if len(slices) > 1:
                u = self._conv_silu(hx, c)
            z = torch.matmul(w_z[c], xt) if b_z is None else torch.matmul(w_z[c], xt) + b_z[c, None]
            y = selective_scan(
                u, torch.matmul(w_dt[:, c], dt), A[:, c], B, C, D=D[:, c], z=z, delta_bias=delta_bias[:, c],
                delta_softplus=True, orders=orders)                # both gated directions summed: (B, |c|, L)
            y = F.linear(y.transpose(1, 2), self.out_proj.weight[:, c])
            out = y if out is None else out.add_(y)
        if self.divide_out:  # halving the projection's output equals halving its input exactly (a power of two)
            out = out * 0.5
        return out if self.out_proj.bias is None else out + self.out_proj.bias


def _add_rms_norm(residual: torch.Tensor, norm: RmsNorm, dtype: torch.dtype) -> torch.Tensor:
    """RMSNorm of the float32 residual stream, returned in ``dtype`` (mamba_ssm's fused add + RMSNorm)."""
    return F.rms_norm(residual, norm.normalized_shape, norm.weight.to(residual.dtype), norm.eps).to(dtype)


class VimBlock(nn.Module):
    """Add -> RMSNorm -> mixer. Takes the previous block's mixer output and the float32 residual stream (None in the
    first block), returns this block's mixer output and the updated stream. Stochastic depth applies to the incoming
    mixer output as it is added to the stream (as the original)."""

    def __init__(
            self,
            dim: int,
            norm_eps: float = 1e-5,
            drop_path: float = 0.,
            mixer_kwargs: Optional[Dict] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.mixer = BiMambaMixer(dim, **(mixer_kwargs or {}), **dd)
        self.norm = RmsNorm(dim, eps=norm_eps, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden.float()
        else:
            residual = residual + self.drop_path(hidden).float()
        hidden = self.mixer(_add_rms_norm(residual, self.norm, hidden.dtype))
        return hidden, residual


class Vim(nn.Module):
    """Vision Mamba (Vim) with a middle class token.

    Args:
        img_size: Input size the position embedding is trained for (other sizes resample it).
        patch_size: Patch (kernel) size of the patch embedding.
        stride: Stride of the patch embedding (16, or 8 for the fine-tuned "+" models).
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0 for none).
        global_pool: 'token' (the middle class token, as the original), 'avg' (mean of the patch tokens) or ''
            (none: forward returns all tokens, (B, L, C)).
        embed_dim: Token width.
        depth: Number of blocks.
        d_state: State size n of the scan.
        expand: Mixer inner width over embed_dim.
        d_conv: Kernel size of the depthwise causal conv.
        divide_out: Halve the sum of the two directions (the released weights' ``if_divide_out``).
        norm_eps: Epsilon of every RMSNorm.
        drop_rate: Dropout before the classifier.
        pos_drop_rate: Dropout after the position embedding.
        drop_path_rate: Stochastic depth rate, increasing linearly over the blocks.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            expand: int = 2,
            d_conv: int = 4,
            divide_out: bool = True,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = VimPatchEmbed(img_size, patch_size, stride, in_chans, embed_dim, **dd)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        # the class token's position sits in the middle, at index num_patches // 2 (as it is stored in the original)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # block i's stochastic depth acts on block i-1's output; the final add uses the full rate (as the original)
        dpr = [0.] + torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        mixer_kwargs = dict(d_state=d_state, expand=expand, d_conv=d_conv, divide_out=divide_out)
        self.layers = nn.ModuleList([
            VimBlock(embed_dim, norm_eps=norm_eps, drop_path=dpr[i], mixer_kwargs=mixer_kwargs, **dd)
            for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.norm_f = RmsNorm(embed_dim, eps=norm_eps, **dd)
        reduction = self.patch_embed.stride[0]
        self.feature_info = [dict(module=f'layers.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """The original's: lecun-normal patch conv, truncated-normal (0.02) position embedding, class token and
        classifier, zero Linear biases except dt_proj's, and out_proj rescaled by 1/sqrt(depth) (GPT-2 style)."""
        if self.pos_embed.is_meta:
            return
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            mixer = layer.mixer
            for linear in (mixer.in_proj, mixer.x_proj, mixer.x_proj_b, mixer.out_proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight /= math.sqrt(len(self.layers))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # the original's list, and the parameters it marks with _no_weight_decay (A_log, D and their _b twins)
        exempt = ('.A_log', '.A_b_log', '.D', '.D_b')
        return {'pos_embed', 'cls_token'} | {n for n, _ in self.named_parameters() if n.endswith(exempt)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ('token', 'avg', ''):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device, dtype = self.pos_embed.device, self.pos_embed.dtype
        self.head = nn.Linear(self.embed_dim, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()

    def _pos_embed(self, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Position embeddings of the patch tokens (resampled to ``grid``) and of the class token."""
        mid = self.patch_embed.num_patches // 2
        pos = self.pos_embed
        patches = torch.cat((pos[:, :mid], pos[:, mid + 1:]), dim=1)
        patches = resample_pos_embed(patches, grid, self.patch_embed.grid_size, num_prefix_tokens=0)
        return patches, pos[:, mid:mid + 1]

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image -> tokens (B, M + 1, C) with the class token at index M // 2, and the patch grid."""
        x = self.patch_embed(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        pos_patches, pos_cls = self._pos_embed(grid)
        x = x + pos_patches
        cls = (self.cls_token + pos_cls).expand(x.shape[0], -1, -1).to(x.dtype)
        mid = x.shape[1] // 2
        x = torch.cat((x[:, :mid], cls, x[:, mid:]), dim=1)
        return self.pos_drop(x), grid

    def _run_layer(self, layer: VimBlock, hidden: torch.Tensor,
                   residual: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def _final_norm(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        residual = hidden.float() if residual is None else residual + self.drop_path(hidden).float()
        if isinstance(self.norm_f, RmsNorm):
            return _add_rms_norm(residual, self.norm_f, hidden.dtype)
        return residual.to(hidden.dtype)  # pruned away: the plain residual stream

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> normalised tokens (B, M + 1, C), the class token at index M // 2."""
        hidden, _ = self._embed(x)
        residual = None
        for layer in self.layers:
            hidden, residual = self._run_layer(layer, hidden, residual)
        return self._final_norm(hidden, residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        mid = (x.shape[1] - 1) // 2
        if self.global_pool == 'token':
            x = x[:, mid]
        elif self.global_pool == 'avg':
            x = torch.cat((x[:, :mid], x[:, mid + 1:]), dim=1).mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates.

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n blocks if int, all if None, the blocks at these indices if a sequence.
            return_prefix_tokens: Return each intermediate as (map, class token (B, C)).
            norm: Take the normalised residual stream after each block instead of its mixer output.
            stop_early: Stop after the last block needed for the intermediates.
            output_fmt: 'NCHW' (B, C, rows, columns) or 'NLC' (B, rows * columns, C), patch tokens only.
            intermediates_only: Only return the intermediates.

        Returns:
            The intermediates, and the final features (``forward_features``' format) unless ``intermediates_only``.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        hidden, (rows, cols) = self._embed(x)
        mid = rows * cols // 2
        layers = self.layers if torch.jit.is_scripting() or not stop_early else self.layers[:max_index + 1]
        residual = None
        intermediates = []
        for i, layer in enumerate(layers):
            hidden, residual = self._run_layer(layer, hidden, residual)
            if i in take_indices:
                feat = self._final_norm(hidden, residual) if norm else hidden
                patches = torch.cat((feat[:, :mid], feat[:, mid + 1:]), dim=1)
                if output_fmt == 'NCHW':
                    patches = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], rows, cols)
                intermediates.append((patches, feat[:, mid]) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self._final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / classifier)."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def _resize_pos_embed(pos_embed: torch.Tensor, model: Vim) -> torch.Tensor:
    """A checkpoint's middle-class-token position embedding (square grid) resized to the model's grid."""
    target = model.pos_embed.shape[1]
    if pos_embed.shape[1] == target:
        return pos_embed
    num_patches = pos_embed.shape[1] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f'pos_embed of {pos_embed.shape[1]} tokens is not a square grid plus a class token')
    mid = num_patches // 2
    patches = torch.cat((pos_embed[:, :mid], pos_embed[:, mid + 1:]), dim=1)
    grid = model.patch_embed.grid_size
    patches = resample_abs_pos_embed(patches, new_size=list(grid), old_size=[side, side], num_prefix_tokens=0)
    new_mid = grid[0] * grid[1] // 2
    return torch.cat((patches[:, :new_mid], pos_embed[:, mid:mid + 1], patches[:, new_mid:]), dim=1)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Vim) -> Dict[str, torch.Tensor]:
    """Map an original Vim checkpoint onto this model: the training pickle's ``'model'`` entry (not its
    ``'model_ema'``), keys unchanged (this model keeps the original's names), the position embedding resized to the
    model's grid."""
    state_dict = unwrap_state_dict(state_dict, STATE_DICT_KEYS)
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    state_dict.pop('rope.freqs_cos', None)  # rope variants' buffers (recomputed, never learned)
    state_dict.pop('rope.freqs_sin', None)
    if 'pos_embed' in state_dict:
        state_dict['pos_embed'] = _resize_pos_embed(state_dict['pos_embed'], model)
    return state_dict


def _default_out_indices(depth: int) -> Tuple[int, ...]:
    """The authors' segmentation taps, [5, 11, 17, 23] for 24 blocks: the end of every quarter of the depth."""
    if depth < 4:
        return tuple(range(depth))
    return tuple(depth * (q + 1) // 4 - 1 for q in range(4))


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    out_indices = kwargs.pop('out_indices', _default_out_indices(kwargs.get('depth', 24)))
    return build_model_with_cfg(
        Vim,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        state_dict_keys=STATE_DICT_KEYS,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(stride: int = 16, **kwargs) -> Dict:
    grid = (224 - 16) // stride + 1
    # the original evaluates like DeiT: resize to 224 / 0.875, center crop, bicubic, ImageNet mean/std
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (grid, grid),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2401.09417',
        'paper_name': 'Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model',
        'origin_url': 'https://github.com/hustvl/Vim',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'zoo_vim_tiny.hustvl_in1k': _cfg(
        hf_hub_id='hustvl/Vim-tiny-midclstok', hf_hub_filename='vim_t_midclstok_76p1acc.pth'),
    'zoo_vim_small.hustvl_in1k': _cfg(
        hf_hub_id='hustvl/Vim-small-midclstok', hf_hub_filename='vim_s_midclstok_80p5acc.pth'),
    'zoo_vim_base.hustvl_in1k': _cfg(
        hf_hub_id='hustvl/Vim-base-midclstok', hf_hub_filename='vim_b_midclstok_81p9acc.pth'),
    'zoo_vim_tiny_stride8.hustvl_in1k': _cfg(
        stride=8, hf_hub_id='hustvl/Vim-tiny-midclstok', hf_hub_filename='vim_t_midclstok_ft_78p3acc.pth'),
    'zoo_vim_small_stride8.hustvl_in1k': _cfg(
        stride=8, hf_hub_id='hustvl/Vim-small-midclstok', hf_hub_filename='vim_s_midclstok_ft_81p6acc.pth'),
})

# sha256 of the LFS objects, from the Hugging Face upload commits of hustvl/Vim-tiny-midclstok (757b3e9) and
# hustvl/Vim-small-midclstok (44c3934, both files); none found published for vim_b_midclstok_81p9acc.pth
register_sha256s({
    'hf-hub:hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth':
        'fedb1e60267f3bc7b2a8443f2ddead8d39e019d10247a87252162b3789801fd5',
    'hf-hub:hustvl/Vim-tiny-midclstok/vim_t_midclstok_ft_78p3acc.pth':
        '9847490c5c3ca36cc38caf8be537b726f326a1b5b15764b0bde650934ac35b54',
    'hf-hub:hustvl/Vim-small-midclstok/vim_s_midclstok_80p5acc.pth':
        'aae4583e2def6389b66cfaf292cfade47a873182a39adbec19ec55b730ea9fe3',
    'hf-hub:hustvl/Vim-small-midclstok/vim_s_midclstok_ft_81p6acc.pth':
        'fc46ad7cbd7f35021de31aefc618611d9ee75958076fc8168ca47d6d613665e3',
})


@register_model
def zoo_vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(patch_size=16, stride=16, embed_dim=192, depth=24)
    return _create_vim('zoo_vim_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vim_small(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(patch_size=16, stride=16, embed_dim=384, depth=24)
    return _create_vim('zoo_vim_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vim_base(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(patch_size=16, stride=16, embed_dim=768, depth=24)
    return _create_vim('zoo_vim_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vim_tiny_stride8(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vim('zoo_vim_tiny_stride8', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_vim_small_stride8(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vim('zoo_vim_small_stride8', pretrained=pretrained, **dict(model_args, **kwargs))
