"""LookupViT: compressing visual information to a limited number of tokens.

Paper: `LookupViT: Compressing visual information to a limited number of tokens` - https://arxiv.org/abs/2407.12753
(arXiv:2407.12753, Koner, Jain, Jain, Tresp, Paul; ECCV 2024).
Original code: none released, and no weights. This module is written from the paper; lucidrains' third-party
``vit_pytorch/look_vit.py`` (MIT) served as a reference for the attention reuse, and the tests check our block
against both a literal transcription of the equations and numbers produced by that implementation's modules.
License of this code: Apache-2.0 (the zoo's). There are no pretrained weights.

The image becomes a grid of *lookup* tokens (patch embedding + learned position embedding, stride 16); a bilinear
resize of that grid gives a few *compressed* tokens (7x7 by default, a setting that can change at inference:
:meth:`LookupViT.set_compressed_size`). Each block (F_p compressed, F_l lookup, LN layer norms):

    1. information gathering    F_p += MHBC_l->p(LN(F_p), LN(F_l))   A = Q_p K_l^T / sqrt(d), softmax(A) V_l
    2. representation refining  F_p += MHSA(LN(F_p));  F_p += MLP(LN(F_p))              (MLP ratio 4)
    3. global context infusion  F_l += MHBC_p->l(LN(F_p), A)                           softmax(A^T) V_p
                                F_l += MLP_l(LN(F_l))                    (lighter MLP: ratio ``lookup_mlp_ratio``)

The propagation in step 3 reuses the gathering step's pre-softmax similarities A (multi-head, B x h x M x N),
normalised along the other axis (over the compressed tokens for each lookup token), so it needs no query/key
projections, only a value projection of the refined compressed tokens and an output projection. The heavy work
(self-attention, MLP ratio 4) runs on M compressed tokens; per lookup token a block costs the K/V projection, the
output projection and the light MLP. Per block, in multiply-accumulates (N lookup, M compressed tokens, width D,
lookup MLP ratio r): ``2 M^2 D + 3 N M D + (3 + 2 r) N D^2 + 15 M D^2`` (a ViT block: ``2 N^2 D + 12 N D^2``).

Dense features: the lookup tokens form a stride-16 map at every block; ``forward_intermediates`` / ``features_only``
return those maps (NCHW), ``forward_features`` returns the last one after the final norm, and the classifier
average-pools it. Any input size works: the patch embedding pads to a multiple of 16, the position embedding is
resized (bicubic) to the lookup grid, and the compressed grid never exceeds the lookup grid (it is clamped to it).

Choices the paper's text did not settle for us (documented in the model card): the lookup MLP ratio (0.5 here),
the classifier reading the lookup tokens, one learned position embedding added before the resize (so the compressed
tokens carry its bilinear resize), and no class token.
"""
import math
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import (
    Attention,
    ClassifierHead,
    DropPath,
    LayerNorm,
    Mlp,
    PatchEmbed,
    calculate_drop_path_rates,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from zoo.hub import build_model_with_cfg, unwrap_state_dict
from zoo.layers import fx_leaf

__all__ = ['LookupViT', 'LookupBlock']

SizeArg = Union[int, Tuple[int, int]]


def _compressed_size(size: SizeArg) -> Tuple[int, int]:
    size = to_2tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f'compressed_size must be a positive int or a pair of positive ints (rows, cols), '
                         f'e.g. 7 or (7, 7); got {size!r}')
    return tuple(size)


@fx_leaf
def _compressed_grid(compressed_size: Tuple[int, int], height: int, width: int) -> Tuple[int, int]:
    """The compressed grid: ``compressed_size`` clamped to the lookup grid (a symbolic min, no guard, where the grid
    is symbolic under torch.export)."""
    return torch.sym_min(compressed_size[0], height), torch.sym_min(compressed_size[1], width)


class GatherAttention(nn.Module):
    """Multi-head cross-attention from the compressed tokens (queries) to the lookup tokens (keys, values):
    MHBC l->p. Also returns the pre-softmax similarities ``A = Q K^T / sqrt(d)`` (B, heads, M, N) for the
    propagation step to reuse."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, compressed: torch.Tensor, lookup: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, M, C = compressed.shape
        N = lookup.shape[1]
        q = self.q(compressed).reshape(B, M, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(lookup).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, M, N)
        attn = self.attn_drop(logits.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, M, C)
        return self.proj_drop(self.proj(x)), logits


class PropagateAttention(nn.Module):
    """Multi-head cross-attention from the lookup tokens to the compressed tokens that reuses the gathering step's
    similarities: MHBC p->l, ``softmax(A^T) V_p``. The softmax runs over the compressed tokens (dim -2 of A), so
    there is no query or key projection, only values from the compressed tokens and the output projection."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, compressed: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        B, M, C = compressed.shape
        N = logits.shape[-1]
        v = self.v(compressed).reshape(B, M, self.num_heads, self.head_dim).transpose(1, 2)
        attn = self.attn_drop(logits.softmax(dim=-2))  # over the compressed tokens, for each lookup token
        x = (attn.transpose(-2, -1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class LookupBlock(nn.Module):
    """One LookupViT block on (compressed (B, M, C), lookup (B, N, C)) token sets; see the module docstring."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            lookup_mlp_ratio: float = 0.5,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        attn_args = dict(qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.gather_norm_c = norm_layer(dim, **dd)
        self.gather_norm_l = norm_layer(dim, **dd)
        self.gather = GatherAttention(dim, num_heads, **attn_args)
        self.attn_norm = norm_layer(dim, **dd)
        self.attn = Attention(dim, num_heads, **attn_args)
        self.mlp_norm = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.propagate_norm = norm_layer(dim, **dd)
        self.propagate = PropagateAttention(dim, num_heads, **attn_args)
        self.lookup_mlp_norm = norm_layer(dim, **dd)
        self.lookup_mlp = Mlp(dim, int(dim * lookup_mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, compressed: torch.Tensor, lookup: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        gathered, logits = self.gather(self.gather_norm_c(compressed), self.gather_norm_l(lookup))
        compressed = compressed + self.drop_path(gathered)
        compressed = compressed + self.drop_path(self.attn(self.attn_norm(compressed)))
        compressed = compressed + self.drop_path(self.mlp(self.mlp_norm(compressed)))
        lookup = lookup + self.drop_path(self.propagate(self.propagate_norm(compressed), logits))
        lookup = lookup + self.drop_path(self.lookup_mlp(self.lookup_mlp_norm(lookup)))
        return compressed, lookup


class LookupViT(nn.Module):
    """LookupViT: a plain ViT whose blocks process M compressed tokens fully and N lookup tokens lightly.

    Args:
        img_size: Input size the position embedding is made for (other sizes resize it).
        patch_size: Patch size of the lookup tokens (their stride).
        in_chans: Input channels.
        num_classes: Classifier outputs (0 for none).
        global_pool: Pooling of the final lookup-token map ('avg', 'max', 'avgmax', 'catavgmax', '' for none).
        embed_dim: Token width D.
        depth: Number of LookupViT blocks.
        num_heads: Heads of every attention (gathering, self-attention, propagation).
        mlp_ratio: MLP hidden ratio for the compressed tokens.
        lookup_mlp_ratio: MLP hidden ratio for the lookup tokens (the lighter MLP).
        compressed_size: Compressed-token grid (rows, cols), or one int for a square grid; changeable later with
            :meth:`set_compressed_size`. Clamped to the lookup grid for small inputs.
        qkv_bias: Biases of the query/key/value projections.
        proj_bias: Biases of the attention output projections.
        drop_rate: Dropout before the classifier.
        pos_drop_rate: Dropout after the position embedding.
        proj_drop_rate: Dropout after projections and MLPs.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth, rising linearly over the blocks.
        norm_layer: Norm for tokens (default LayerNorm, eps 1e-6).
        act_layer: MLP activation (default GELU).
    """

    def __init__(
            self,
            img_size: SizeArg = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            lookup_mlp_ratio: float = 0.5,
            compressed_size: SizeArg = 7,
            qkv_bias: bool = True,
            proj_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            act_layer: Optional[Callable[..., nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})')
        norm_layer = norm_layer or (lambda dim, **kw: LayerNorm(dim, eps=1e-6, **kw))
        act_layer = act_layer or nn.GELU
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.compressed_size = _compressed_size(compressed_size)
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            flatten=False, output_fmt='NHWC', strict_img_size=False, dynamic_img_pad=True, **dd)
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.patch_embed.grid_size), embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            LookupBlock(
                embed_dim, num_heads, mlp_ratio=mlp_ratio, lookup_mlp_ratio=lookup_mlp_ratio, qkv_bias=qkv_bias,
                proj_bias=proj_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                act_layer=act_layer, norm_layer=norm_layer, **dd)
            for i in range(depth)])
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head = ClassifierHead(embed_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.init_weights()

    def init_weights(self):
        trunc_normal_(self.pos_embed, std=.02)
        self.apply(_init_linear)

    def set_compressed_size(self, compressed_size: SizeArg):
        """Use a different compressed-token grid from now on (same parameters; e.g. 3, 5, 7 or 10 for B/16)."""
        self.compressed_size = _compressed_size(compressed_size)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^pos_embed|^patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """Lookup tokens (B, N, C) with the position embedding, the compressed tokens (B, M, C) resized from
        them, and the lookup grid (H, W)."""
        x = self.patch_embed(x)  # (B, H, W, C), padded to the patch size
        B, H, W, C = x.shape
        pos_embed = resample_abs_pos_embed(
            self.pos_embed, new_size=(H, W), old_size=self.patch_embed.grid_size, num_prefix_tokens=0)
        x = self.pos_drop(x + pos_embed.reshape(1, H, W, C))
        size = _compressed_grid(self.compressed_size, H, W)
        compressed = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode='bilinear', align_corners=False)
        return compressed.flatten(2).transpose(1, 2), x.reshape(B, H * W, C), (H, W)

    def _block(self, block: nn.Module, compressed: torch.Tensor, lookup: torch.Tensor):
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, compressed, lookup, use_reentrant=False)
        return block(compressed, lookup)

    @staticmethod
    def _to_nchw(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final lookup tokens after the norm, as a stride-16 NCHW map."""
        compressed, lookup, size = self._embed(x)
        for block in self.blocks:
            compressed, lookup = self._block(block, compressed, lookup)
        return self._to_nchw(self.norm(lookup), size)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_compressed_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[Any], Tuple[torch.Tensor, List[Any]]]:
        """Forward features that returns the lookup tokens of the chosen blocks.

        Args:
            x: Input image tensor.
            indices: Take the last n blocks if int, all if None, the matching indices if a sequence.
            return_compressed_tokens: Return (lookup map, compressed tokens (B, M, C)) pairs.
            norm: Apply the final norm to every intermediate (compressed tokens included).
            stop_early: Stop after the last block needed for the intermediates.
            output_fmt: 'NCHW' (stride-16 maps) or 'NLC' (token sequences).
            intermediates_only: Only return the intermediates.

        Returns:
            The intermediates, and (unless ``intermediates_only``) the final features (``forward_features``).
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        compressed, lookup, size = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            compressed, lookup = self._block(block, compressed, lookup)
            if i in take_indices:
                feat, comp = (self.norm(lookup), self.norm(compressed)) if norm else (lookup, compressed)
                feat = self._to_nchw(feat, size) if output_fmt == 'NCHW' else feat
                intermediates.append((feat, comp) if return_compressed_tokens else feat)
        if intermediates_only:
            return intermediates
        return self._to_nchw(self.norm(lookup), size), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and norm / head) not needed for the given intermediates."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_linear(module: nn.Module):
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: LookupViT) -> Dict[str, torch.Tensor]:
    """Unwrap a training checkpoint (``model`` / ``state_dict`` / EMA keys) and resize a position embedding saved
    for another input size (a square grid) to this model's grid. No other checkpoint layout exists: the paper
    released no weights."""
    state_dict = unwrap_state_dict(state_dict)
    pos_embed = state_dict.get('pos_embed')
    if pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        state_dict = dict(state_dict, pos_embed=resample_abs_pos_embed(
            pos_embed, new_size=model.patch_embed.grid_size, num_prefix_tokens=0))
    return state_dict


def _create_lookupvit(variant: str, pretrained: bool = False, **kwargs) -> LookupViT:
    # features_only: four lookup-token maps (stride 16) evenly spaced over the blocks, e.g. (2, 5, 8, 11) for 12
    depth = kwargs.get('depth', 12)
    out_indices = kwargs.pop('out_indices', tuple(depth * (i + 1) // 4 - 1 for i in range(4)))
    return build_model_with_cfg(
        LookupViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
        'crop_pct': 0.9, 'interpolation': 'bicubic',
        'mean': IMAGENET_INCEPTION_MEAN, 'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2407.12753',
        'paper_name': 'LookupViT: Compressing visual information to a limited number of tokens',
        'origin_url': 'https://arxiv.org/abs/2407.12753',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # architectures only: the paper released no code and no weights
    'zoo_lookupvit_s16': _cfg(),
    'zoo_lookupvit_b16': _cfg(),
})


@register_model
def zoo_lookupvit_s16(pretrained: bool = False, **kwargs) -> LookupViT:
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_lookupvit('zoo_lookupvit_s16', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_lookupvit_b16(pretrained: bool = False, **kwargs) -> LookupViT:
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_lookupvit('zoo_lookupvit_b16', pretrained=pretrained, **dict(model_args, **kwargs))
