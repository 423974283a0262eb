"""Sparsifiner: learning sparse instance-dependent attention for efficient vision transformers.

Paper: `Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers`
- https://arxiv.org/abs/2303.13755 (arXiv:2303.13755, Wei, Duke, Jiang, Aarabi, Taylor, Shkurti; CVPR 2023).
Original code: https://github.com/lim142857/Sparsifiner (MIT; ``src/models/sparsifiner.py``).
Weights: none released. ``pretrained=True`` loads timm's copy of the DeiT-S ImageNet-1k weights
(``timm/deit_small_patch16_224.fb_in1k``, Apache-2.0; the authors start from the same DeiT-S file) into the
backbone and warns that the connectivity predictors keep their random initialisation.

A DeiT (timm's ``VisionTransformer``, ``vit_small_patch16_224`` layout) in which every block's attention first
predicts, per query, which keys it may attend to, then attends to those keys only. The predictor (the authors'
``MaskPredictor``, defaults of their ``sparsifiner_default_config.yaml``) is a low-rank attention:

    q', k'  = proj_c_q(q), proj_c_k(k)                   head width D -> D / 2            (B, h, N, D/2)
    k''     = k'^T @ proj_n                              tokens N -> r = N // 6 (32 at 224) (B, h, D/2, r)
    coef    = softmax(q'[1:] @ k'' * h ** -0.5)          over r; the class-token row is dropped
    coef    = the top 8 of the r coefficients, others 0  (not renormalised)
    basis   = |proj_back_n|^T with entries <= 0.02 set to 0                           (r, N)
    approx  = coef @ basis                               an approximate attention        (B, h, N-1, N)
    keys    = top-k of approx per query, k = ceil(keep_rate * N) (50 of 197 at 224, keep_rate 0.25)

and the class token's query keeps every key. The authors then compute the full ``N x N`` scores and mask the others
with -inf; here the patch queries go through ``kernels.sparse_attention`` on the predicted indices (each query's
softmax over its ``k`` keys) and the class token through dense attention, which is the same function (equal to the
authors' masked formulation in eval, see the tests) without the dense score matrix.

Training (the authors' ``engine.py`` / ``losses.py``): their forward returns a dict; so does
:meth:`Sparsifiner.forward_sparsifiner`, with the same entries (``x`` logits, ``features`` final-normed patch tokens,
``basis_coef_list``, ``approx_attn_list``, optionally ``attn_mask_list`` and ``unmasked_attn_list``, plus
``key_index_list``), so their distillation losses apply unchanged. ``attn_recon=True`` is their predictor-training
stage (``LOSS.USE_ATTN_RECON`` in training): dense attention, the raw (signed, unthresholded) basis and all ``r``
coefficients. ``forward`` returns logits as in timm. The default config has no token pruning
(``TOKEN_PRUNING_LOC: []``); it is not implemented.

Input sizes: any. The patch embedding pads to a multiple of 16 (timm's ``dynamic_img_pad``); the position
embedding and the predictor's token-indexed projections (``proj_n``, ``proj_back_n``; class-token row kept, the grid
rows resized bicubically, ``proj_n`` scaled by the area ratio so that its token sum keeps its magnitude) follow the
token grid, and the key budget is ``ceil(keep_rate * N)`` of the actual ``N``. The keep rate is a construction
argument (one rate or one per block) and can be changed at inference (:meth:`Sparsifiner.set_keep_rate`); with a
budget of every key the block runs dense attention.
"""
import math
import warnings
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import Block, VisionTransformer

from kernels import sparse_attention
from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import fx_leaf, resample_pos_embed

__all__ = ['Sparsifiner', 'SparsifinerLVViT', 'ConnectivityPredictor', 'SparsifinerAttention', 'SparsifinerBlock',
           'ConvStemPatchEmbed']

GridSize = Tuple[int, int]


def _check_keep_rate(rate: float, name: str = 'keep_rate') -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
        raise ValueError(f'{name} must be a number in (0, 1] (the share of keys each query attends to), got {rate!r}')
    return float(rate)


def _resample_tokens(table: torch.Tensor, old: GridSize, new: GridSize, sum_preserving: bool) -> torch.Tensor:
    """A (1 + H*W, C) token-indexed table on grid ``old`` resized to grid ``new``; the class-token row is kept.
    ``sum_preserving`` scales the grid rows by the area ratio (for a projection that sums over the tokens)."""
    out = resample_abs_pos_embed(table.unsqueeze(0), new_size=list(new), old_size=list(old), num_prefix_tokens=1)[0]
    if sum_preserving:
        out = torch.cat([out[:1], out[1:] * (old[0] * old[1] / (new[0] * new[1]))])
    return out


@fx_leaf
def _budget(keep_rate: float, num_tokens: int) -> int:
    return min(num_tokens, math.ceil(keep_rate * num_tokens))


@fx_leaf
def _grid_projections(proj_n: torch.Tensor, proj_back_n: torch.Tensor, old: GridSize,
                      new: GridSize) -> Tuple[torch.Tensor, torch.Tensor]:
    """The predictor's token projections laid out for grid ``old``, resized to grid ``new`` where it differs. A
    symbolic grid (torch.export, dynamic torch.compile) is always resized: at the same size the resize is the
    identity, and comparing would pin the size."""
    symbolic = any(isinstance(g, torch.SymInt) for g in new)
    if not symbolic and tuple(new) == tuple(old):
        return proj_n, proj_back_n
    return (_resample_tokens(proj_n, old, new, sum_preserving=True),
            _resample_tokens(proj_back_n, old, new, sum_preserving=False))


class ConnectivityPredictor(nn.Module):
    """Sparsifiner's per-block connectivity predictor (the authors' ``MaskPredictor``; same parameter names).

    Args:
        head_dim: width ``D`` of a head's queries and keys.
        num_heads: heads ``h``; the low-rank logits are scaled by ``h ** -0.5`` (the authors' choice).
        grid_size: the patch grid its token-indexed projections are laid out on (14 x 14 at 224).
        keep_rate: share of the keys each patch query keeps, ``k = ceil(keep_rate * N)``.
        reduce_n_factor: ``r = (1 + H*W) // reduce_n_factor`` basis vectors (6: 32 at 224).
        reduce_c_factor: the low-rank queries and keys have ``D // reduce_c_factor`` channels.
        share_inout_proj: one table for ``proj_n`` and ``proj_back_n``.
        basis_threshold: basis entries with ``|value| <= basis_threshold`` are zeroed (sparse basis).
        basis_topk: coefficients kept per query (the others are zeroed, the kept ones not renormalised).
    """

    def __init__(
            self,
            head_dim: int,
            num_heads: int,
            grid_size: GridSize,
            keep_rate: float = 0.25,
            reduce_n_factor: int = 6,
            reduce_c_factor: int = 2,
            share_inout_proj: bool = False,
            basis_threshold: float = 0.02,
            basis_topk: int = 8,
    ) -> None:
        super().__init__()
        num_tokens = grid_size[0] * grid_size[1] + 1
        self.grid_size = tuple(grid_size)
        self.keep_rate = _check_keep_rate(keep_rate)
        self.reduced_n = int(num_tokens // reduce_n_factor)
        self.reduced_c = head_dim // reduce_c_factor
        if self.reduced_n < basis_topk or self.reduced_c < 1:
            raise ValueError(
                f'the connectivity predictor needs (1 + H*W) // reduce_n_factor >= basis_topk and head_dim // '
                f'reduce_c_factor >= 1; got (1 + {grid_size[0]}*{grid_size[1]}) // {reduce_n_factor} = '
                f'{self.reduced_n} basis vectors for basis_topk = {basis_topk}, {head_dim} // {reduce_c_factor} = '
                f'{self.reduced_c} channels: build the model for a larger img_size or lower reduce_n_factor')
        self.scale = num_heads ** -0.5
        self.basis_threshold = basis_threshold
        self.basis_topk = basis_topk
        self.proj_c_q = nn.Linear(head_dim, self.reduced_c)
        self.proj_c_k = nn.Linear(head_dim, self.reduced_c)
        self.proj_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
        trunc_normal_(self.proj_n, std=.02)
        if share_inout_proj:
            self.proj_back_n = self.proj_n
        else:
            self.proj_back_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
            trunc_normal_(self.proj_back_n, std=.02)

    def budget(self, num_tokens: int) -> int:
        """Keys kept per patch query for a sequence of ``num_tokens`` (class token included)."""
        return _budget(self.keep_rate, num_tokens)

    def projections(self, grid_size: Optional[GridSize] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``proj_n`` and ``proj_back_n`` for a token grid, resized when it differs from the stored one."""
        if grid_size is None:
            return self.proj_n, self.proj_back_n
        return _grid_projections(self.proj_n, self.proj_back_n, self.grid_size, tuple(grid_size))

    @torch.no_grad()
    def set_grid_size(self, grid_size: GridSize) -> None:
        """Resize the stored projections to a new token grid (``Sparsifiner.set_input_size``)."""
        grid_size = tuple(grid_size)
        if grid_size == self.grid_size:
            return
        shared = self.proj_back_n is self.proj_n
        proj_n, proj_back_n = self.projections(grid_size)
        self.proj_n = nn.Parameter(proj_n)
        self.proj_back_n = self.proj_n if shared else nn.Parameter(proj_back_n)
        self.grid_size = grid_size

    def approx_attention(self, q: torch.Tensor, k: torch.Tensor, grid_size: Optional[GridSize] = None,
                         attn_recon: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """The approximate attention of the patch queries (B, h, N-1, N) and its basis coefficients (B, h, N-1, r).

        ``attn_recon``: the authors' predictor-training forward (raw signed basis, all ``r`` coefficients).
        """
        proj_n, proj_back_n = self.projections(grid_size)
        q, k = self.proj_c_q(q), self.proj_c_k(k)
        k = k.transpose(-2, -1) @ proj_n  # (B, h, c, r)
        basis = proj_back_n.t()  # (r, N)
        if not attn_recon:
            basis = F.threshold(basis.abs(), self.basis_threshold, 0.0)
        # the authors' operation order, so that the selection below sees the same numbers
        coef = ((q @ k) * self.scale)[..., 1:, :].softmax(dim=-1)
        if not attn_recon:
            top, top_index = coef.topk(self.basis_topk, sorted=False)
            coef = torch.zeros_like(coef).scatter_(-1, top_index, top)
        return coef @ basis, coef

    @staticmethod
    def select(approx_attn: torch.Tensor, budget: int) -> torch.Tensor:
        """The ``budget`` keys of largest approximate attention per patch query, int64 (B, h, N-1, budget)."""
        return torch.topk(approx_attn.detach(), budget, dim=-1, sorted=False).indices


def _keys_to_mask(key_index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The authors' ``attn_mask`` (B, h, N, N) of 0/1: a dense class-token row, then the kept keys per query."""
    b, h, n = key_index.shape[:3]
    mask = key_index.new_zeros((b, h, n, num_tokens), dtype=torch.float32)
    mask.scatter_(-1, key_index, 1.0)
    return torch.cat([mask.new_ones(b, h, 1, num_tokens), mask], dim=2)


def _tie_to_graph(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, with ``other`` in its autograd graph (zero gradient). In a training forward the
    selection is not differentiable, so without this the predictor would get no gradient at all and DDP without
    ``find_unused_parameters`` would fail; the authors add their attention loss with weight 0 for the same reason."""
    return x + other.sum() * 0.0


class SparsifinerAttention(Attention):
    """timm's ``Attention`` (same ``qkv`` / ``proj``) with a connectivity predictor (``mask_predictor``): the patch
    queries attend to their predicted keys only, through ``kernels.sparse_attention``; the class token to every key."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            grid_size: GridSize,
            keep_rate: float = 0.25,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            proj_drop: float = 0.,
            **predictor_args: Any,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, proj_drop=proj_drop)
        self.mask_predictor = ConnectivityPredictor(
            self.head_dim, num_heads, grid_size, keep_rate=keep_rate, **predictor_args)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def _sparse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        cls = F.scaled_dot_product_attention(q[:, :, :1], k, v, scale=self.scale)
        patches = sparse_attention(q[:, :, 1:], k, v, key_index, scale=self.scale)
        return torch.cat([cls, patches], dim=2)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        B, _, N, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))

    def forward(self, x: torch.Tensor, grid_size: Optional[GridSize] = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        N = q.shape[2]
        budget = self.mask_predictor.budget(N)
        training = self.training and torch.is_grad_enabled()
        # FX tracing knows no sizes: a keep rate below 1 takes the sparse path (with a budget of every key it is
        # the same function as the dense one)
        sparse = self.mask_predictor.keep_rate < 1.0 if isinstance(q, torch.fx.Proxy) else budget < N
        approx = None
        if sparse or training:
            approx, _ = self.mask_predictor.approx_attention(q, k, grid_size)
        if sparse:
            out = self._sparse(q, k, v, self.mask_predictor.select(approx, budget))
        else:  # every key kept: dense attention is the same function
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        if training:
            out = _tie_to_graph(out, approx)
        return self._project(out)

    def forward_sparsifiner(
            self,
            x: torch.Tensor,
            grid_size: Optional[GridSize] = None,
            attn_recon: bool = False,
            return_attn_mask: bool = False,
            return_unmasked_attn: bool = False,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The block's output and the authors' per-block training outputs (see ``Sparsifiner.forward_sparsifiner``)."""
        q, k, v = self._qkv(x)
        N = q.shape[2]
        budget = self.mask_predictor.budget(N)
        approx, coef = self.mask_predictor.approx_attention(q, k, grid_size, attn_recon=attn_recon)
        key_index = self.mask_predictor.select(approx, budget)
        if attn_recon or budget >= N:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            out = self._sparse(q, k, v, key_index)
        extras = dict(basis_coef=coef, approx_attn=approx, key_index=key_index)
        if return_attn_mask:
            extras['attn_mask'] = _keys_to_mask(key_index, N)
        if return_unmasked_attn:
            extras['unmasked_attn'] = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self._project(out), extras


class SparsifinerBlock(Block):
    """timm's pre-norm ViT block (same parameters) with :class:`SparsifinerAttention`; the block index ``depth``
    picks its keep rate from ``keep_rates``. ``skip_lam`` divides both residual branches (LV-ViT's 2.0)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            grid_size: GridSize,
            keep_rates: Sequence[float],
            predictor_args: Dict[str, Any],
            qkv_bias: bool = True,
            proj_bias: bool = True,
            proj_drop: float = 0.,
            depth: int = 0,
            skip_lam: float = 1.0,
            **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, proj_drop=proj_drop, depth=depth,
                         **kwargs)
        self.skip_lam = skip_lam
        self.attn = SparsifinerAttention(
            dim, num_heads, grid_size, keep_rate=keep_rates[depth], qkv_bias=qkv_bias, proj_bias=proj_bias,
            proj_drop=proj_drop, **predictor_args)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) / self.skip_lam

    def forward(self, x: torch.Tensor, grid_size: Optional[GridSize] = None) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), grid_size))) / self.skip_lam
        return self._mlp(x)

    def forward_sparsifiner(self, x: torch.Tensor, grid_size: Optional[GridSize] = None,
                            **kwargs: bool) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        y, extras = self.attn.forward_sparsifiner(self.norm1(x), grid_size, **kwargs)
        return self._mlp(x + self.drop_path1(self.ls1(y)) / self.skip_lam), extras


class Sparsifiner(VisionTransformer):
    """DeiT with Sparsifiner's learned instance-dependent sparse attention (see the module docstring).

    Takes timm's ``VisionTransformer`` arguments for the backbone (class token, learned position embedding,
    token pooling) and the predictor's:

    Args:
        keep_rate: share of the keys each patch query attends to, one rate or one per block (0.25 by default:
            50 of 197 keys at 224). Changeable later with :meth:`set_keep_rate`.
        reduce_n_factor: basis size ``r = N // reduce_n_factor`` at ``img_size`` (6: 32).
        reduce_c_factor: low-rank query/key width ``head_dim // reduce_c_factor`` (2).
        share_inout_proj: share ``proj_n`` and ``proj_back_n`` (False).
        basis_threshold: basis entries ``<= basis_threshold`` in magnitude are zeroed (0.02).
        basis_topk: basis coefficients kept per query (8).
        skip_lam: residual branches divided by it (1; LV-ViT's 2).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            keep_rate: Union[float, Sequence[float]] = 0.25,
            reduce_n_factor: int = 6,
            reduce_c_factor: int = 2,
            share_inout_proj: bool = False,
            basis_threshold: float = 0.02,
            basis_topk: int = 8,
            skip_lam: float = 1.0,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            **kwargs: Any,
    ) -> None:
        if attn_drop_rate:
            raise ValueError(f'attn_drop_rate must be 0, got {attn_drop_rate}: the sparse attention has no attention '
                             f'dropout (the authors\' DeiT model never applies it, and their configs use 0)')
        allowed = {'weight_init', 'fix_init', 'norm_layer', 'act_layer', 'init_values', 'embed_layer'}
        unsupported = sorted(set(kwargs) - allowed)
        if unsupported:
            raise TypeError(f'Sparsifiner got unsupported arguments {unsupported}: the predictor needs a class token '
                            f'and a plain token grid (no registers, patch dropout or pooling heads)')
        keep_rates = [keep_rate] * depth if isinstance(keep_rate, (int, float)) else list(keep_rate)
        if len(keep_rates) != depth:
            raise ValueError(f'keep_rate must be one rate or one per block ({depth}), got {len(keep_rates)} rates')
        keep_rates = [_check_keep_rate(r) for r in keep_rates]
        img_size, patch = to_2tuple(img_size), to_2tuple(patch_size)
        grid_size = (img_size[0] // patch[0], img_size[1] // patch[1])
        predictor_args = dict(reduce_n_factor=reduce_n_factor, reduce_c_factor=reduce_c_factor,
                              share_inout_proj=share_inout_proj, basis_threshold=basis_threshold,
                              basis_topk=basis_topk)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, class_token=True, dynamic_img_size=True, dynamic_img_pad=True, drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate,
            block_fn=partial(SparsifinerBlock, grid_size=grid_size, keep_rates=keep_rates,
                             predictor_args=predictor_args, skip_lam=skip_lam),
            **kwargs,
        )

    @property
    def keep_rates(self) -> List[float]:
        return [blk.attn.mask_predictor.keep_rate for blk in self.blocks]

    def set_keep_rate(self, keep_rate: Union[float, Sequence[float]]) -> None:
        """Change the share of keys each patch query keeps (one rate, or one per block); takes effect at once."""
        rates = [keep_rate] * len(self.blocks) if isinstance(keep_rate, (int, float)) else list(keep_rate)
        if len(rates) != len(self.blocks):
            raise ValueError(f'keep_rate must be one rate or one per block ({len(self.blocks)}), got {len(rates)}')
        rates = [_check_keep_rate(r) for r in rates]
        for blk, rate in zip(self.blocks, rates):
            blk.attn.mask_predictor.keep_rate = rate

    def set_input_size(self, img_size: Optional[Tuple[int, int]] = None,
                       patch_size: Optional[Tuple[int, int]] = None) -> None:
        """timm's resize of the patch embedding and position embedding, plus the predictors' token projections."""
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        for blk in self.blocks:
            blk.attn.mask_predictor.set_grid_size(self.patch_embed.grid_size)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed', 'cls_token'}

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``_pos_embed`` for this model's layout (a class token, position embeddings over it too, the patch
        grid (B, H, W, C) of ``dynamic_img_size``), flattening the grid without a -1 (an empty batch has none to
        infer) and with the resampling a leaf of FX tracing."""
        B, H, W, C = x.shape
        pos_embed = resample_pos_embed(self.pos_embed, (H, W), self.patch_embed.grid_size, num_prefix_tokens=1)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.flatten(1, 2)], dim=1)
        return self.pos_drop(x + pos_embed)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, GridSize]:
        x = self.patch_embed(x)  # (B, H, W, C): dynamic_img_size
        grid_size = (x.shape[1], x.shape[2])
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))
        return x, grid_size

    def _run_block(self, block: SparsifinerBlock, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, grid_size)
        return block(x, grid_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid_size = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x, grid_size)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_sparsifiner(
            self,
            x: torch.Tensor,
            attn_recon: bool = False,
            return_attn_mask: bool = False,
            return_unmasked_attn: bool = False,
    ) -> Dict[str, Any]:
        """The authors' training forward: a dict with their keys, for their distillation losses.

        Returns:
            ``x``: logits (B, classes); ``features``: the final-normed patch tokens (B, N-1, C) (token
            distillation); per block, ``basis_coef_list`` (B, h, N-1, r), ``approx_attn_list`` (B, h, N-1, N)
            (attention reconstruction / self-distillation), ``key_index_list`` (B, h, N-1, k) (the kept keys of
            each patch query), and on request ``attn_mask_list`` (B, h, N, N) 0/1 with a dense class-token row (the
            budget losses) and ``unmasked_attn_list`` (B, h, N, N), the dense softmax attention (attention
            self-distillation; computing it costs the dense attention).
            ``attn_recon=True``: the authors' predictor-training stage (``LOSS.USE_ATTN_RECON``): dense attention,
            raw basis, all coefficients.
        """
        x, grid_size = self._embed(x)
        flags = dict(attn_recon=attn_recon, return_attn_mask=return_attn_mask,
                     return_unmasked_attn=return_unmasked_attn)
        per_block: Dict[str, List[torch.Tensor]] = {}
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, extras = checkpoint(block.forward_sparsifiner, x, grid_size, **flags)
            else:
                x, extras = block.forward_sparsifiner(x, grid_size, **flags)
            for key, value in extras.items():
                per_block.setdefault(f'{key}_list', []).append(value)
        return dict(self._training_outputs(self.norm(x)), **per_block)

    def _training_outputs(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(x=self.forward_head(x), features=x[:, self.num_prefix_tokens:])

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            attn_mask: Optional[torch.Tensor] = None,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as stride-16 maps (NCHW, or NLC tokens), as timm's ``VisionTransformer``.

        Args:
            indices: the last ``n`` blocks if an int, all if None, else the listed block indices.
            return_prefix_tokens: pair each map with its class token.
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' or 'NLC'.
            intermediates_only: return only the intermediates.
            attn_mask: must be None (timm's ``get_intermediate_layers`` passes it): the predictor picks the keys.
        """
        if attn_mask is not None:
            raise ValueError('Sparsifiner takes no attn_mask: each query attends to the keys its predictor selects')
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, (H, W) = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x, (H, W))
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [y.reshape(B, H, W, y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


class ConvStemPatchEmbed(nn.Module):
    """LV-ViT's patch embedding (Token Labeling's ``PatchEmbed4_2``, same parameter names): a 7x7 stride-2 conv and
    two 3x3 convs, each with BatchNorm and ReLU, then a (p/2)x(p/2) stride-p/2 projection, stride p in all. Pads the
    input to a multiple of p (bottom/right, zeros, as timm's ``dynamic_img_pad``) and returns (B, H/p, W/p, C)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            embed_dim: int = 384,
            output_fmt: str = 'NHWC',
            device=None,
            dtype=None,
            **kwargs: Any,  # timm's PatchEmbed arguments that do not apply (bias, dynamic_img_pad, strict_img_size)
    ) -> None:
        super().__init__()
        if output_fmt != 'NHWC':
            raise ValueError(f"ConvStemPatchEmbed returns NHWC maps (dynamic_img_size), got output_fmt={output_fmt!r}")
        self.patch_size = to_2tuple(patch_size)
        self.img_size = to_2tuple(img_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(64, **dd)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(64, **dd)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(64, **dd)
        half = (self.patch_size[0] // 2, self.patch_size[1] // 2)
        self.proj = nn.Conv2d(64, embed_dim, kernel_size=half, stride=half, **dd)

    def feat_ratio(self, as_scalar: bool = True) -> Union[int, Tuple[int, int]]:
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return math.ceil(img_size[0] / self.patch_size[0]), math.ceil(img_size[1] / self.patch_size[1])

    def set_input_size(self, img_size: Optional[Tuple[int, int]] = None, patch_size: Optional[Any] = None) -> None:
        if patch_size is not None:
            raise ValueError('ConvStemPatchEmbed cannot change its patch size (a stride-2 stem and a p/2 projection)')
        if img_size is not None:
            self.img_size = to_2tuple(img_size)
            self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % self.patch_size[0], (-W) % self.patch_size[1]
        x = F.pad(x, (0, pad_w, 0, pad_h))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.proj(x).permute(0, 2, 3, 1)


class SparsifinerLVViT(Sparsifiner):
    """LV-ViT (Token Labeling, arXiv:2104.10858) with Sparsifiner's attention: the authors' ``SparsifinerLVViT``
    (``src/models/sparsifiner_lvvit.py``) as built by their ``main.py`` (LV-ViT-S: 16 blocks of width 384, 6 heads,
    MLP ratio 3, no qkv bias, residual branches divided by ``skip_lam`` 2, LayerNorm eps 1e-5, the convolutional
    stem, and a second classifier ``aux_head`` on the patch tokens). The prediction is
    ``head(class token) + 0.5 * max over patches of aux_head(patch token)``, as theirs in eval;
    ``forward_sparsifiner`` in training returns ``head(class token)`` as ``x`` and the patch logits as ``features``
    (their token-labelling distillation target), as theirs does.
    """

    def __init__(self, num_classes: int = 1000, embed_dim: int = 384, skip_lam: float = 2.0, qkv_bias: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, embed_dim=embed_dim, skip_lam=skip_lam, qkv_bias=qkv_bias,
                         embed_layer=ConvStemPatchEmbed, norm_layer=kwargs.pop('norm_layer', nn.LayerNorm), **kwargs)
        self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.aux_head.weight, std=.02)
            nn.init.zeros_(self.aux_head.bias)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.aux_head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _aux_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux_head(self.head_drop(x[:, self.num_prefix_tokens:]))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = super().forward_head(x, pre_logits=pre_logits)
        if pre_logits or self.num_classes == 0:
            return out
        return out + 0.5 * self._aux_logits(x).max(dim=1)[0]

    def _training_outputs(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = super().forward_head(x) if self.training else self.forward_head(x)
        return dict(x=logits, features=self._aux_logits(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Sparsifiner) -> Dict[str, torch.Tensor]:
    """Map a checkpoint onto the model: the authors' Sparsifiner checkpoints (``{'model': state_dict}``, the same
    keys as this model), and DeiT checkpoints (timm's hub files, or the original ``deit_small_patch16_224-cd65a155.pth``
    under ``model``) that have no predictor: those keep the model's (untrained) predictors, with a warning.

    A position embedding or predictor projection saved for another grid is resized to the model's (square grids,
    as saved by the authors and by DeiT). The predictor's basis size ``r`` is fixed by the ``img_size`` it was
    trained at; a model built for another ``img_size`` cannot take it (ValueError), build it at the checkpoint's size:
    other input sizes work at run time.
    """
    if isinstance(state_dict.get('model'), dict):  # the authors evaluate 'model', not their EMA copy
        state_dict = state_dict['model']
    state_dict = unwrap_state_dict(state_dict)
    grid_size = model.patch_embed.grid_size
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key in own and value.ndim and value.shape != own[key].shape:
            if key == 'pos_embed':
                value = resample_abs_pos_embed(value, new_size=list(grid_size), num_prefix_tokens=1)
            elif key.endswith(('mask_predictor.proj_n', 'mask_predictor.proj_back_n')):
                if value.shape[1] != own[key].shape[1]:
                    raise ValueError(
                        f'{key} has {value.shape[1]} basis vectors, the model {own[key].shape[1]}: the basis size '
                        f'(1 + H*W) // reduce_n_factor is set by the training img_size; build the model at that size '
                        f'(img_size={int(math.isqrt(value.shape[0] - 1)) * model.patch_embed.patch_size[0]}), it runs '
                        f'at any input size')
                side = math.isqrt(value.shape[0] - 1)
                value = _resample_tokens(value, (side, side), grid_size, sum_preserving=key.endswith('proj_n'))
            elif key.startswith('aux_head.'):
                continue  # another class count: dropped as timm drops 'head' (load_pretrained loads non-strict then)
        out[key] = value
    if not any('mask_predictor' in key for key in out):
        warnings.warn(
            'This checkpoint has no Sparsifiner connectivity-predictor weights (none were ever released): the '
            'backbone (DeiT / LV-ViT) is loaded, and every block\'s predictor keeps its random initialisation, so the '
            'keys it selects are arbitrary and accuracy is far below the backbone\'s until the predictors are trained '
            '(the authors\' stage 1: forward_sparsifiner(attn_recon=True) against the dense teacher\'s attention). '
            'set_keep_rate(1.0) runs the dense backbone.', UserWarning, stacklevel=2)
        out.update({k: v for k, v in own.items() if 'mask_predictor' in k})
    return out


def _create_sparsifiner(variant: str, pretrained: bool = False, model_cls: type = Sparsifiner, **kwargs) -> Sparsifiner:
    # features_only: four stride-16 maps evenly spaced over the blocks, e.g. (2, 5, 8, 11) for 12
    depth = kwargs.get('depth', 12)
    default_indices = tuple(depth * (i + 1) // 4 - 1 for i in range(4)) if depth >= 4 else tuple(range(depth))
    out_indices = kwargs.pop('out_indices', default_indices)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'paper_ids': 'arXiv:2303.13755',
        'paper_name': 'Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers',
        'origin_url': 'https://github.com/lim142857/Sparsifiner',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # the backbone only: DeiT-S ImageNet-1k (Apache-2.0), the authors' starting point; the predictors are untrained
    'zoo_sparsifiner_deit_small.fb_in1k': _cfg(hf_hub_id='timm/deit_small_patch16_224.fb_in1k', license='apache-2.0'),
    # the backbone only: Token Labeling's LV-ViT-S ImageNet-1k release (Apache-2.0), the authors' starting point
    'zoo_sparsifiner_lvvit_small.tl_in1k': _cfg(
        url='https://github.com/zihangJiang/TokenLabeling/releases/download/1.0/lvvit_s-26M-224-83.3.pth.tar',
        license='apache-2.0', first_conv='patch_embed.conv1'),
})


@register_model
def zoo_sparsifiner_deit_small(pretrained: bool = False, **kwargs) -> Sparsifiner:
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True)
    return _create_sparsifiner('zoo_sparsifiner_deit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_sparsifiner_lvvit_small(pretrained: bool = False, **kwargs) -> SparsifinerLVViT:
    model_args = dict(patch_size=16, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3, qkv_bias=False, skip_lam=2.0)
    return _create_sparsifiner('zoo_sparsifiner_lvvit_small', pretrained=pretrained, model_cls=SparsifinerLVViT,
                               **dict(model_args, **kwargs))
