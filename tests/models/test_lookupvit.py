"""LookupViT: the block against the paper's equations and against lucidrains' implementation, the compressed tokens,
parameter and FLOP counts, any input size, features and checkpoints.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is LookupViT's own.
There is no official code and there are no weights. Two independent references for the block:
  * ``paper_block`` below, a literal transcription of the paper's equations (per head, per image, 2-D matrices);
  * lookupvit_lucidrains_blocks.safetensors, two layers of lucidrains' ``look_vit.py`` run in its forward's order
    on given compressed and lookup tokens (see the fixture's ``source``), with its weights. Their layer departs from
    the paper in one step, a post-norm on the lookup tokens after the propagation: the fixture leaves that step out,
    and the key mapping below drops its parameters. Their LayerNorm is ``LN(x) * (gamma + 1)`` without bias, eps 1e-5.
"""
import math
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from timm.layers import LayerNorm
from torch.utils.flop_counter import FlopCounterMode

from tests.parity import FIXTURES, assert_rel_close, load_parity_fixture, perturbed
from zoo.models.lookupvit import LookupBlock, LookupViT, checkpoint_filter_fn

VARIANTS = {  # name: (embed_dim, depth, num_heads)
    'zoo_lookupvit_s16': (384, 12, 6),
    'zoo_lookupvit_b16': (768, 12, 12),
}


def small_model(**kwargs) -> LookupViT:
    torch.manual_seed(0)
    args = dict(img_size=64, embed_dim=32, depth=3, num_heads=4, num_classes=5, compressed_size=3)
    return perturbed(LookupViT(**dict(args, **kwargs)))


# ---------------------------------------------------------------------------------------------------------------
# The block: the paper's equations, written out


def paper_block(block: LookupBlock, Fp: torch.Tensor, Fl: torch.Tensor, heads: int):
    """One LookupViT block as the paper writes it, for one image: F_p (M, D) compressed, F_l (N, D) lookup tokens.

        F_p <- F_p + MHBC_l->p(LN(F_p), LN(F_l))      A_i = Q_i K_i^T / sqrt(d),  softmax_rows(A_i) V_i
        F_p <- F_p + MHSA(LN(F_p))
        F_p <- F_p + MLP(LN(F_p))
        F_l <- F_l + MHBC_p->l(LN(F_p), A)            softmax_rows(A_i^T) V'_i    (A reused, no new Q/K)
        F_l <- F_l + MLP_l(LN(F_l))

    Heads are column blocks of the projection matrices; concatenated head outputs go through W_o.
    """
    D = Fp.shape[1]
    d = D // heads

    def ln(x, norm):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    def linear(x, layer, rows=slice(None)):
        bias = 0 if layer.bias is None else layer.bias[rows]
        return x @ layer.weight[rows].T + bias

    def head(i):
        return slice(i * d, (i + 1) * d)

    def softmax_rows(a):
        e = torch.exp(a - a.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)

    def mlp(x, m):
        return linear(F.gelu(linear(x, m.fc1)), m.fc2)

    g = block.gather
    Xp, Xl = ln(Fp, block.gather_norm_c), ln(Fl, block.gather_norm_l)
    A, Y = [], []
    for i in range(heads):
        Q = linear(Xp, g.q, head(i))
        K = linear(Xl, g.kv, head(i))
        V = linear(Xl, g.kv, slice(D + i * d, D + (i + 1) * d))
        A.append(Q @ K.T / math.sqrt(d))
        Y.append(softmax_rows(A[i]) @ V)
    Fp = Fp + linear(torch.cat(Y, dim=1), g.proj)

    s = block.attn
    X = ln(Fp, block.attn_norm)
    Y = []
    for i in range(heads):
        Q, K, V = (linear(X, s.qkv, slice(j * D + i * d, j * D + (i + 1) * d)) for j in range(3))
        Y.append(softmax_rows(Q @ K.T / math.sqrt(d)) @ V)
    Fp = Fp + linear(torch.cat(Y, dim=1), s.proj)
    Fp = Fp + mlp(ln(Fp, block.mlp_norm), block.mlp)

    p = block.propagate
    X = ln(Fp, block.propagate_norm)
    Z = [softmax_rows(A[i].T) @ linear(X, p.v, head(i)) for i in range(heads)]
    Fl = Fl + linear(torch.cat(Z, dim=1), p.proj)
    Fl = Fl + mlp(ln(Fl, block.lookup_mlp_norm), block.lookup_mlp)
    return Fp, Fl


@torch.no_grad()
def test_block_is_the_papers_equations():
    torch.manual_seed(0)
    heads = 4
    block = perturbed(LookupBlock(24, heads, mlp_ratio=4., lookup_mlp_ratio=0.5)).double()
    Fp, Fl = torch.randn(2, 6, 24, dtype=torch.float64), torch.randn(2, 15, 24, dtype=torch.float64)
    ours = block(Fp, Fl)
    for b in range(2):
        expected = paper_block(block, Fp[b], Fl[b], heads)
        for got, want in zip(ours, expected):
            torch.testing.assert_close(got[b], want, rtol=1e-10, atol=1e-10)


def test_propagation_reuses_the_gathering_similarities():
    """The lookup tokens' update depends on the gathering queries and keys (through the reused A) and nothing
    else of the gathering step: gradients of the lookup output reach gather.q and gather.kv's key half, and the
    gathering values and output projection only through the compressed tokens."""
    torch.manual_seed(0)
    block = perturbed(LookupBlock(16, 2)).train()
    Fp, Fl = torch.randn(1, 4, 16), torch.randn(1, 9, 16)
    _, lookup = block(Fp, Fl)
    lookup.square().sum().backward()
    assert block.gather.q.weight.grad.abs().sum() > 0
    assert block.gather.kv.weight.grad[:16].abs().sum() > 0
    assert all(p.grad is not None for p in block.propagate.parameters())
    # no query/key projections of their own in the propagation
    assert set(n for n, _ in block.propagate.named_parameters()) == {'v.weight', 'v.bias', 'proj.weight', 'proj.bias'}


# ---------------------------------------------------------------------------------------------------------------
# The block: lucidrains' look_vit.py on the same weights


def lucidrains_to_blocks(state_dict, depth):
    """Their ``layers.{i}.{0: self-attn, 1: MLP, 2: lookup cross-attn, 3: reused-attention cross-attn,
    4: post-norm (not in the paper), 5: lookup MLP}`` onto our ``blocks.{i}``. Their LayerNorm gamma is an offset
    from 1; they have no biases in attention and norms."""
    out = {}
    for i in range(depth):
        def get(key, i=i):
            return state_dict[f'{i}.{key}']
        ours = {
            'gather_norm_c.weight': get('2.norm.gamma') + 1,
            'gather_norm_l.weight': get('2.norm_context.gamma') + 1,
            'gather.q.weight': get('2.to_q.weight'),
            'gather.kv.weight': torch.cat([get('2.to_k.weight'), get('2.to_v.weight')]),
            'gather.proj.weight': get('2.to_out.1.weight'),
            'attn_norm.weight': get('0.norm.gamma') + 1,
            'attn.qkv.weight': torch.cat([get('0.to_q.weight'), get('0.to_k.weight'), get('0.to_v.weight')]),
            'attn.proj.weight': get('0.to_out.1.weight'),
            'mlp_norm.weight': get('1.0.gamma') + 1,
            'propagate_norm.weight': get('3.norm_context.gamma') + 1,
            'propagate.v.weight': get('3.to_v.weight'),
            'propagate.proj.weight': get('3.to_out.1.weight'),
            'lookup_mlp_norm.weight': get('5.0.gamma') + 1,
        }
        for mlp, j in (('mlp', 1), ('lookup_mlp', 5)):
            for fc, k in (('fc1', 1), ('fc2', 4)):
                for p in ('weight', 'bias'):
                    ours[f'{mlp}.{fc}.{p}'] = get(f'{j}.{k}.{p}')
        out.update({f'{i}.{k}': v for k, v in ours.items()})
    return out


@torch.no_grad()
def test_blocks_match_lucidrains_look_vit():
    fixture = load_parity_fixture('lookupvit_lucidrains_blocks')
    with safe_open(FIXTURES / 'lookupvit_lucidrains_blocks.safetensors', framework='pt') as f:
        compressed_in, compressed_out = f.get_tensor('compressed_input'), f.get_tensor('compressed_output')
    kw = fixture.model_kwargs
    norm = partial(LayerNorm, eps=kw['norm_eps'])
    blocks = torch.nn.ModuleList([
        LookupBlock(kw['embed_dim'], kw['num_heads'], mlp_ratio=kw['mlp_ratio'],
                    lookup_mlp_ratio=kw['lookup_mlp_ratio'], qkv_bias=kw['qkv_bias'], proj_bias=kw['proj_bias'],
                    norm_layer=norm)
        for _ in range(kw['depth'])]).eval()
    mapped = lucidrains_to_blocks(fixture.state_dict, kw['depth'])
    unused = {k for k in fixture.state_dict if k.split('.')[1] == '4'}
    assert unused == {f'{i}.4.gamma' for i in range(kw['depth'])}, 'only their post-norm is left out'
    missing, unexpected = blocks.load_state_dict(mapped, strict=False)
    assert not unexpected
    assert missing and all(k.endswith('norm_c.bias') or k.endswith('norm_l.bias') or k.endswith('norm.bias')
                           for k in missing), missing
    for k in missing:  # bias-free LayerNorms
        blocks.get_parameter(k).zero_()

    compressed, lookup = compressed_in, fixture.input
    for block in blocks:
        compressed, lookup = block(compressed, lookup)
    assert_rel_close(compressed, compressed_out, msg='compressed tokens')
    assert_rel_close(lookup, fixture.output, msg='lookup tokens')


# ---------------------------------------------------------------------------------------------------------------
# Tokens


@torch.no_grad()
def test_compressed_tokens_are_a_bilinear_resize_of_the_lookup_grid():
    model = small_model(img_size=224, compressed_size=7)
    x = torch.randn(1, 3, 224, 224)
    compressed, lookup, (H, W) = model._embed(x)
    assert (H, W) == (14, 14) and compressed.shape == (1, 49, 32) and lookup.shape == (1, 196, 32)
    grid = lookup.transpose(1, 2).reshape(1, 32, 14, 14)
    # 14 -> 7 bilinear (half-pixel centres) averages each 2x2 cell; the position embedding is carried along
    torch.testing.assert_close(compressed, F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2))
    expected_lookup = model.patch_embed(x).reshape(1, 196, 32) + model.pos_embed
    torch.testing.assert_close(lookup, expected_lookup)

    model.set_compressed_size((5, 3))
    compressed, _, _ = model._embed(x)
    torch.testing.assert_close(compressed, F.interpolate(grid, size=(5, 3), mode='bilinear').flatten(2).transpose(1, 2))


@torch.no_grad()
def test_compressed_size_changes_at_inference_with_the_same_weights():
    model = small_model(img_size=128, compressed_size=5)
    x = torch.randn(2, 3, 128, 128)
    out5 = model(x)
    (_, comp5), = model.forward_intermediates(x, indices=1, return_compressed_tokens=True, intermediates_only=True)
    assert comp5.shape == (2, 25, 32)
    model.set_compressed_size(3)
    (feat3, comp3), = model.forward_intermediates(x, indices=1, return_compressed_tokens=True, intermediates_only=True)
    assert comp3.shape == (2, 9, 32) and feat3.shape == (2, 32, 8, 8)
    assert not torch.allclose(model(x), out5)
    # never more compressed tokens than lookup tokens: an 8x8 lookup grid caps a 10x12 setting
    model.set_compressed_size((10, 12))
    (_, comp), = model.forward_intermediates(x, indices=1, return_compressed_tokens=True, intermediates_only=True)
    assert comp.shape == (2, 64, 32)
    # ... and then the compressed tokens start as the lookup tokens themselves
    compressed, lookup, _ = model._embed(x)
    torch.testing.assert_close(compressed, lookup)


@pytest.mark.parametrize('size', [0, -1, (7,), (7, 0), 2.5, (3, 'a'), True])
def test_bad_compressed_size_is_refused(size):
    with pytest.raises(ValueError, match='compressed_size must be a positive int or a pair'):
        LookupViT(embed_dim=32, depth=1, num_heads=4, compressed_size=size)
    model = LookupViT(embed_dim=32, depth=1, num_heads=4)
    with pytest.raises(ValueError, match='compressed_size'):
        model.set_compressed_size(size)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r'embed_dim \(30\) must be a multiple of num_heads \(4\)'):
        LookupViT(embed_dim=30, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NLC'"):
        small_model().forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt='NHWC')


# ---------------------------------------------------------------------------------------------------------------
# Any input size, features


@torch.no_grad()
def test_any_input_size_resizes_the_position_embedding():
    model = small_model(img_size=64)  # a 4x4 position grid
    x = torch.randn(1, 3, 100, 37)  # padded to 112x48: a 7x3 lookup grid
    final, intermediates = model.forward_intermediates(x)
    assert final.shape == (1, 32, 7, 3) and all(f.shape == (1, 32, 7, 3) for f in intermediates)
    _, lookup, _ = model._embed(x)
    pos = F.interpolate(model.pos_embed.reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(7, 3), mode='bicubic',
                        antialias=True)
    tokens = model.patch_embed(x).reshape(1, 21, 32)
    torch.testing.assert_close(lookup, tokens + pos.flatten(2).transpose(1, 2))
    assert model(x).shape == (1, 5)


@torch.no_grad()
def test_intermediates_are_the_lookup_maps():
    model = small_model()
    x = torch.randn(2, 3, 64, 48)
    final, maps = model.forward_intermediates(x)
    assert len(maps) == 3 and all(m.shape == (2, 32, 4, 3) for m in maps)
    torch.testing.assert_close(final, model.forward_features(x))
    normed = model.norm(maps[-1].flatten(2).transpose(1, 2))
    torch.testing.assert_close(final, normed.transpose(1, 2).reshape(2, 32, 4, 3))
    tokens = model.forward_intermediates(x, indices=[0], output_fmt='NLC', norm=True, intermediates_only=True)
    torch.testing.assert_close(tokens[0], model.norm(maps[0].flatten(2).transpose(1, 2)))
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], maps[1])


@torch.no_grad()
def test_features_only_gives_evenly_spaced_stride_16_maps():
    torch.manual_seed(0)
    model = timm.create_model('zoo_lookupvit_s16', embed_dim=32, num_heads=4).eval()
    torch.manual_seed(0)  # the same initial weights
    backbone = timm.create_model('zoo_lookupvit_s16', embed_dim=32, num_heads=4, features_only=True).eval()
    assert backbone.feature_info.out_indices == (2, 5, 8, 11)
    assert backbone.feature_info.reduction() == [16] * 4 and backbone.feature_info.channels() == [32] * 4
    x = torch.randn(1, 3, 80, 96)
    _, maps = model.forward_intermediates(x)
    for feat, i in zip(backbone(x), (2, 5, 8, 11)):
        torch.testing.assert_close(feat, maps[i])
    assert len(backbone.model.blocks) == 12 and isinstance(backbone.model.norm, torch.nn.Identity)


def test_head_pools_the_normed_lookup_map():
    model = small_model()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features.mean((2, 3)))
    torch.testing.assert_close(model(x), model.head.fc(pooled))
    assert model.no_weight_decay() == {'pos_embed'}


# ---------------------------------------------------------------------------------------------------------------
# Parameters and FLOPs


def block_params(D: int, lookup_mlp_ratio: float = 0.5, mlp_ratio: float = 4.) -> int:
    h, hl = int(D * mlp_ratio), int(D * lookup_mlp_ratio)
    norms = 6 * 2 * D
    gather = (D * D + D) + (2 * D * D + 2 * D) + (D * D + D)  # q, kv, proj
    attn = (3 * D * D + 3 * D) + (D * D + D)  # qkv, proj
    mlp = (D * h + h) + (h * D + D)
    propagate = (D * D + D) + (D * D + D)  # v, proj: no query or key
    lookup_mlp = (D * hl + hl) + (hl * D + D)
    return norms + gather + attn + mlp + propagate + lookup_mlp


def block_macs(N: int, M: int, D: int, r: float = 0.5) -> int:
    """2 M^2 D + 3 N M D + (3 + 2r) N D^2 + 15 M D^2 (r the lookup MLP ratio, compressed MLP ratio 4)."""
    return 2 * M * M * D + 3 * N * M * D + int((3 + 2 * r) * N * D * D) + 15 * M * D * D


@pytest.mark.parametrize('name', VARIANTS)
def test_parameter_count(name):
    D, depth, _ = VARIANTS[name]
    with torch.device('meta'):
        model = timm.create_model(name)
    stem = 3 * 16 * 16 * D + D + 14 * 14 * D  # patch projection, position embedding (14x14 at 224)
    head = 2 * D + D * 1000 + 1000  # final norm, classifier
    assert sum(p.numel() for p in model.parameters()) == stem + depth * block_params(D) + head
    # B/16: 136.25M (ViT-B/16: 86.57M); S/16: 34.51M (ViT-S/16: 22.05M)
    expected = {'zoo_lookupvit_s16': 34_507_624, 'zoo_lookupvit_b16': 136_254_184}[name]
    assert sum(p.numel() for p in model.parameters()) == expected


def count_macs(model, size):
    with torch.device('meta'):
        x = torch.empty(1, 3, *size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def test_macs_follow_the_complexity_formula():
    """MACs counted by torch.utils.flop_counter (matmuls, linears, the patch conv; FLOPs / 2) on the meta device,
    as model cards count them, against the per-block formula, for B/16 at several compressed grids; and against
    timm's ViT-B/16 (17.56 G)."""
    D, depth = 768, 12
    with torch.device('meta'):
        model = timm.create_model('zoo_lookupvit_b16').eval()
        vit = timm.create_model('vit_base_patch16_224').eval()
    vit_macs = count_macs(vit, (224, 224))
    N = 14 * 14
    for grid, ratio in ((3, 0.4), (5, 0.49), (7, 0.64), (10, 0.97)):  # 6.67, 8.47, 11.18, 17.01 G
        model.set_compressed_size(grid)
        M = grid * grid
        macs = count_macs(model, (224, 224))
        assert macs == N * 3 * 16 * 16 * D + depth * block_macs(N, M, D) + D * 1000
        assert macs < ratio * vit_macs
    # at 448 the lookup grid is 28x28 and the compressed grid stays as set (10x10)
    assert count_macs(model, (448, 448)) == 4 * N * 3 * 16 * 16 * D + depth * block_macs(4 * N, M, D) + D * 1000


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


@torch.no_grad()
def test_checkpoint_for_another_size_loads_with_its_position_embedding_resized(tmp_path):
    source = small_model(img_size=64)
    path = tmp_path / 'lookupvit.pth'
    torch.save({'model': source.state_dict(), 'epoch': 3}, path)
    # the file's classifier has 5 classes; saying so keeps timm from dropping it as a mismatch
    overlay = dict(file=str(path), num_classes=5)
    model = timm.create_model(
        'zoo_lookupvit_s16', pretrained=True, pretrained_cfg_overlay=overlay,
        img_size=96, embed_dim=32, depth=3, num_heads=4, num_classes=5, compressed_size=3).eval()
    assert model.pos_embed.shape == (1, 36, 32)
    x = torch.randn(1, 3, 96, 96)
    # the source resizes its 4x4 table to the 6x6 grid on the fly; the loaded model holds the resized table
    torch.testing.assert_close(model(x), source(x))
    filtered = checkpoint_filter_fn({'state_dict': source.state_dict()}, source)
    assert filtered.keys() == source.state_dict().keys() and torch.equal(filtered['pos_embed'], source.pos_embed)


def test_cfgs_say_there_are_no_weights():
    assert timm.list_pretrained('zoo_lookupvit_*') == []
    for name in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg['paper_ids'] == 'arXiv:2407.12753' and cfg['license'] == 'apache-2.0'
        assert not cfg.get('hf_hub_id') and not cfg.get('url')
