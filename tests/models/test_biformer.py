"""BiFormer: parity with the original classification and detection code, auto_pad and exact masking, checkpoints.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is BiFormer's own.
Fixtures, made by running rayleizhu/BiFormer's own code (see each file's `source`):
  biformer_parity.safetensors      models/biformer.py (bra_legacy) with the biformer_tiny config at small dims (head dim
                                   8, depths 1/1/2/1), n_win 7, trained-looking random weights: input (2, 3, 112, 112),
                                   logits, the four stage outputs (``features.N``), the routes of every BRA module,
                                   gradients of ``(logits * grad_output).sum()`` and the state dict (``ckpt.*``);
  biformer_det_parity.safetensors  the same weights in their COCO backbone (models_mm/biformer_mm.py, n_win 16,
                                   auto_pad) at 256x256, which needs no padding: raw stage outputs; ``ckpt.*`` holds
                                   only what the mmdet checkpoint adds (``backbone.extra_norms``, neck/head keys);
  biformer_det_padded.safetensors  that backbone at 96x160, which auto_pad pads in stages 1-3: raw and extra-normed
                                   stage outputs and gradients of ``sum_N features.N.square().mean()``;
  biformer_stl_parity.safetensors  models/biformer_stl.py at small dims, 224x224: logits and the stage-4 output;
  biformer_original_keys.json.gz   key -> shape of biformer_{tiny,small,base,stl} and of the dense backbones
                                   (``backbone.*``) of the small/base COCO configs.
"""
import argparse
import gzip
import json
import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

import zoo  # noqa: F401  (registers the zoo models)
from tests.parity import (
    FIXTURES,
    assert_original_keys_map_exactly,
    assert_rel_close,
    load_parity_fixture,
    original_key_shapes,
)
from zoo.models import biformer
from zoo.models.biformer import BiLevelRoutingAttention, checkpoint_filter_fn


def _tensors(name):
    with safe_open(FIXTURES / f'{name}.safetensors', framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope='module')
def cls_fixture():
    return load_parity_fixture('biformer_parity'), _tensors('biformer_parity')


@pytest.fixture(scope='module')
def cls_file(cls_fixture, tmp_path_factory):
    return cls_fixture[0].save_original_checkpoint(tmp_path_factory.mktemp('biformer') / 'biformer_cls.pth')


def mm_checkpoint(cls_fixture, det):
    """The authors' mmdet checkpoint of the fixtures' backbone: mmcv's {'meta', 'state_dict'} with the classification
    weights (without the final norm and head, which BiFormer_mm deletes) under `backbone.`, plus extra_norms and the
    neck/head keys the detection fixtures hold."""
    fixture, _ = cls_fixture
    state = {f'backbone.{k}': v for k, v in fixture.state_dict.items() if not k.startswith(('norm.', 'head.'))}
    state.update(load_parity_fixture(det).state_dict)
    return {'meta': {'mmdet_version': '2.28.2', 'CLASSES': ('person',)}, 'state_dict': state}


@pytest.fixture(scope='module')
def mm_file(cls_fixture, tmp_path_factory):
    path = tmp_path_factory.mktemp('biformer') / 'maskrcnn_biformer.pth'
    torch.save(mm_checkpoint(cls_fixture, 'biformer_det_parity'), path)
    return path


def create_from(fixture, path, **kwargs):
    """The fixture's model with the original-format file as its pretrained weights."""
    kwargs = dict(fixture.model_kwargs, **kwargs)
    overlay = dict(file=str(path))
    if 'num_classes' in fixture.model_kwargs:
        # the file's classifier has the fixture's class count; saying so keeps timm from dropping it as a mismatch
        overlay['num_classes'] = fixture.model_kwargs['num_classes']
    return timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


@pytest.fixture(scope='module')
def model(cls_fixture, cls_file):
    return create_from(cls_fixture[0], cls_file)


def det_backbone(path, **kwargs):
    det = load_parity_fixture('biformer_det_parity')
    return create_from(det, path, features_only=True, **kwargs)


# --- classification model against the original ---------------------------------------------------------------------

@torch.no_grad()
def test_parity_with_original_checkpoint(cls_fixture, model):
    fixture, t = cls_fixture
    x = fixture.input.float()
    assert_rel_close(model(x), fixture.output)
    _, intermediates = model.forward_intermediates(x)
    for i, feat in enumerate(intermediates):
        assert_rel_close(feat, t[f'features.{i}'], msg=f'stage {i}')


@torch.no_grad()
def test_routes_are_the_original_routes(cls_fixture, model, monkeypatch):
    """region_topk picks the original's regions in every BRA block (the parity above does not hinge on near-ties)."""
    fixture, t = cls_fixture
    routes = {}
    original = biformer.region_topk

    def recording(q, k, n_win, topk, **kwargs):
        index = original(q, k, n_win, topk, **kwargs)
        routes[len(routes)] = index
        return index

    monkeypatch.setattr(biformer, 'region_topk', recording)
    model(fixture.input.float())
    expected = sorted(k for k in t if k.startswith('routes.'))  # stages.0.0, 1.0, 2.0, 2.1: the call order
    assert len(routes) == len(expected) == 4
    for i, name in enumerate(expected):
        assert torch.equal(routes[i], t[name]), name


def test_gradients_match_the_original(cls_fixture, model):
    """Backward through every part (routed attention, LePE, the GELU recomputed in backward, global attention, BN
    in eval) equals the original's autograd, for the input and every parameter."""
    fixture, t = cls_fixture
    model.zero_grad()
    x = fixture.input.float().requires_grad_()
    (model(x) * t['grad_output']).sum().backward()
    assert_rel_close(x.grad, t['grad.input'], msg='input')
    original = {k[len('grad.ckpt.'):]: v for k, v in t.items() if k.startswith('grad.ckpt.')}
    params = dict(model.named_parameters())
    mapped = checkpoint_filter_fn(original, None)
    assert sorted(mapped) == sorted(params)
    for key, grad in mapped.items():
        assert_rel_close(params[key].grad, grad, msg=key)
    model.zero_grad()


def test_loads_the_original_training_checkpoint_layout(cls_fixture, tmp_path):
    """rayleizhu/BiFormer's main.py saves {'model', 'optimizer', 'lr_scheduler', 'epoch', 'scaler', 'args' (an
    argparse.Namespace), 'max_accuracy'}; its loader reads 'model'. A flat state dict loads too."""
    fixture, _ = cls_fixture
    nested = tmp_path / 'biformer_train.pth'
    torch.save(dict(model=fixture.state_dict, optimizer=dict(state={}, param_groups=[]), lr_scheduler={}, epoch=299,
                    scaler={'scale': 65536.0}, args=argparse.Namespace(model='biformer_tiny', drop_path=0.1),
                    max_accuracy=81.4), nested)
    flat = tmp_path / 'biformer_flat.pth'
    torch.save(fixture.state_dict, flat)
    for path in (nested, flat):
        with torch.no_grad():
            assert_rel_close(create_from(fixture, path)(fixture.input.float()), fixture.output, msg=path.name)


def test_filter_passes_our_format_through_and_unwraps(cls_fixture):
    fixture, _ = cls_fixture
    converted = checkpoint_filter_fn(dict(fixture.state_dict), None)
    for key in ('stem.conv1.weight', 'stem.norm2.running_var', 'stages.1.downsample.conv.weight',
                'stages.0.blocks.0.pos_embed.weight', 'stages.0.blocks.0.attn.qkv.bias',
                'stages.2.blocks.1.attn.proj.bias', 'stages.0.blocks.0.attn.lepe.weight',
                'stages.3.blocks.0.attn.qkv.weight', 'stages.0.blocks.0.mlp.fc2.bias', 'norm.running_mean',
                'head.fc.weight'):
        assert key in converted, key
    assert checkpoint_filter_fn(dict(converted), None) == converted
    for wrapper in ('state_dict', 'model'):
        assert checkpoint_filter_fn({wrapper: dict(fixture.state_dict)}, None).keys() == converted.keys()


# --- the detection backbone: features_only, auto_pad and the mm checkpoint ------------------------------------------

@torch.no_grad()
def test_features_only_are_the_detection_backbone_stage_outputs(mm_file):
    """From the authors' mmdet checkpoint, at n_win 16 on a size that needs no padding: the four NCHW features are
    their backbone's stage outputs (before its extra_norms, which belong to the mm adapter)."""
    t = _tensors('biformer_det_parity')
    backbone = det_backbone(mm_file)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    features = backbone(t['input'].float())
    assert [tuple(f.shape) for f in features] == [tuple(t[f'features.{i}'].shape) for i in range(4)]
    for i, feat in enumerate(features):
        assert_rel_close(feat, t[f'features.{i}'], msg=f'stage {i}')
    # the stage maps really are multiples of n_win (no padding anywhere)
    assert all(s % 16 == 0 for f in features[:3] for s in f.shape[-2:])


def test_auto_pad_is_the_original_auto_pad(cls_fixture, tmp_path):
    """At 96x160 their auto_pad pads every BRA stage (24x40, 12x20, 6x10 -> multiples of 16): padded tokens, whose
    q, k and v are the projection's bias, enter the region means, the softmax and the LePE conv. The default reproduces
    it, forward and backward."""
    t = _tensors('biformer_det_padded')
    path = tmp_path / 'mm.pth'
    torch.save(mm_checkpoint(cls_fixture, 'biformer_det_padded'), path)
    backbone = create_from(load_parity_fixture('biformer_det_padded'), path, features_only=True)
    x = t['input'].float().requires_grad_()
    features = backbone(x)
    assert [tuple(f.shape[-2:]) for f in features] == [(24, 40), (12, 20), (6, 10), (3, 5)]
    for i, feat in enumerate(features):
        assert_rel_close(feat, t[f'features.{i}'], msg=f'stage {i}')
    sum(f.square().mean() for f in features).backward()
    assert_rel_close(x.grad, t['grad.input'], msg='input')
    original = {k[len('grad.ckpt.'):]: v for k, v in t.items() if k.startswith('grad.ckpt.')}
    params = dict(backbone.model.named_parameters())
    for key, grad in checkpoint_filter_fn(original, None).items():
        assert_rel_close(params[key].grad, grad, msg=key)


@torch.no_grad()
def test_extra_norms_on_the_features_give_the_authors_outputs(cls_fixture):
    """What the mm adapter must do with `backbone.extra_norms.N` (LayerNorm2d, eps 1e-6): the authors' dense outputs."""
    from timm.layers import LayerNorm2d
    t = _tensors('biformer_det_padded')
    state = mm_checkpoint(cls_fixture, 'biformer_det_padded')['state_dict']
    for i in range(4):
        norm = LayerNorm2d(t[f'features.{i}'].shape[1], eps=1e-6)
        norm.load_state_dict({w: state[f'backbone.extra_norms.{i}.{w}'] for w in ('weight', 'bias')})
        assert_rel_close(norm(t[f'features.{i}']), t[f'normed.{i}'], msg=f'stage {i}')


def test_mm_checkpoint_loads_into_the_classifier_with_a_warning(cls_fixture, mm_file, caplog):
    """A dense checkpoint has no final norm and classifier: the classification model keeps their initial values and
    says so; the backbone weights are the checkpoint's."""
    fixture, _ = cls_fixture
    with caplog.at_level(logging.WARNING, logger='zoo.models.biformer'):
        model = create_from(fixture, mm_file)
    assert 'no final norm' in caplog.text
    expected = checkpoint_filter_fn(dict(fixture.state_dict), None)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(('norm.', 'head.'))}
    assert backbone.keys() == {k for k in expected if not k.startswith(('norm.', 'head.'))}
    assert all(torch.equal(v, expected[k]) for k, v in backbone.items())
    converted = checkpoint_filter_fn(mm_checkpoint(cls_fixture, 'biformer_det_parity'), None)
    dropped = ('backbone.', 'extra_norms.', 'neck.', 'roi_head.', 'norm.', 'head.')
    assert not any(k.startswith(dropped) for k in converted)


# --- exact masking of the padding -------------------------------------------------------------------------------------

def masked_bra_reference(attn: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Bi-level routing attention written out token by token over the real (unpadded) map only: region means of the
    real tokens of each region, no route to a region without one, softmax over the real tokens of the routed regions,
    LePE with the conv's zero border. Regions are those of the map padded to a multiple of n_win."""
    B, H, W, C = x.shape
    n = attn.n_win
    rh, rw = math.ceil(H / n), math.ceil(W / n)
    heads, qk = attn.num_heads, attn.qk_dim
    q, k, v = attn.qkv(x).split([qk, qk, C], dim=-1)
    region = torch.tensor([[(y // rh) * n + (xx // rw) for xx in range(W)] for y in range(H)]).flatten()
    q, k, v = q.reshape(B, H * W, qk), k.reshape(B, H * W, qk), v.reshape(B, H * W, C)
    out = []
    for b in range(B):
        occupied = sorted(set(region.tolist()))
        q_r = torch.stack([q[b, region == r].mean(0) for r in range(n * n) if r in occupied])
        k_r = torch.stack([k[b, region == r].mean(0) for r in range(n * n) if r in occupied])
        affinity = (q_r @ k_r.T).detach()
        rows = []
        for t in range(H * W):
            routed = affinity[occupied.index(region[t].item())].topk(min(attn.topk, len(occupied))).indices
            keys = torch.cat([torch.nonzero(region == occupied[r]).flatten() for r in routed.tolist()])
            head_out = []
            for h in range(heads):
                dq, dv = qk // heads, C // heads
                qs, ks = q[b, t, h * dq:(h + 1) * dq], k[b, keys, h * dq:(h + 1) * dq]
                p = torch.softmax(attn.scale * ks @ qs, dim=0)
                head_out.append(p @ v[b, keys, h * dv:(h + 1) * dv])
            rows.append(torch.cat(head_out))
        out.append(torch.stack(rows))
    out = torch.stack(out).reshape(B, H, W, C)
    lepe = attn.lepe(v.reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return attn.proj(out + lepe)


@pytest.mark.parametrize('hw, n_win, topk', [((10, 13), 4, 3), ((2, 3), 4, 8), ((8, 12), 4, 5)])
def test_mask_padding_is_exact(hw, n_win, topk):
    """mask_padding: the output (and its gradients) equals attention over the real tokens only, including a map
    whose query regions have fewer real key regions than topk (2x3 in 4x4 regions: 6 of 16) and a map that needs no
    padding."""
    torch.manual_seed(0)
    attn = BiLevelRoutingAttention(16, num_heads=2, n_win=n_win, topk=topk, qk_dim=12, mask_padding=True).double()
    x = torch.randn(2, *hw, 16, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, ref = attn(x), masked_bra_reference(attn, x_ref)
    assert_rel_close(out, ref, rel=1e-10)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    assert_rel_close(x.grad, x_ref.grad, rel=1e-10)


@torch.no_grad()
def test_mask_padding_differs_from_auto_pad_only_where_there_is_padding():
    torch.manual_seed(0)
    masked = timm.create_model('zoo_biformer_tiny', depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), head_dim=8,
                               n_win=16, mask_padding=True).eval()
    auto = timm.create_model('zoo_biformer_tiny', depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), head_dim=8,
                             n_win=16).eval()
    auto.load_state_dict(masked.state_dict())
    unpadded = torch.randn(1, 3, 256, 256)
    torch.testing.assert_close(masked(unpadded), auto(unpadded), rtol=0, atol=0)
    padded = torch.randn(1, 3, 96, 160)
    a, b = masked(padded), auto(padded)
    assert (a - b).abs().max() > 1e-3 * b.abs().max()


# --- BiFormer-STL -----------------------------------------------------------------------------------------------

@torch.no_grad()
def test_stl_parity_with_original_checkpoint(tmp_path):
    fixture = load_parity_fixture('biformer_stl_parity')
    t = _tensors('biformer_stl_parity')
    path = fixture.save_original_checkpoint(tmp_path / 'biformer_stl.pth')
    model = create_from(fixture, path)
    x = fixture.input.float()
    assert_rel_close(model(x), fixture.output)
    assert_rel_close(model.forward_intermediates(x, indices=[3], intermediates_only=True)[0], t['features.3'])


@torch.no_grad()
def test_stl_odd_sizes_keep_every_pixel():
    """The original's 4x4 patchify and 2x2 merging drop a remainder row/column; here they are padded, so features
    are ceil(size / stride) as every zoo backbone's (identical wherever the maps are even, e.g. 224)."""
    model = timm.create_model('zoo_biformer_stl', depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), head_dim=8).eval()
    feats = model.forward_intermediates(torch.randn(1, 3, 97, 131), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]


# --- the architectures -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('biformer').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(f'zoo_{variant}', shapes, checkpoint_filter_fn)


def _dense_key_shapes():
    with gzip.open(FIXTURES / 'biformer_original_keys.json.gz', 'rt') as f:
        return json.load(f)['dense']


@pytest.mark.parametrize('variant, shapes', sorted(_dense_key_shapes().items()))
def test_every_dense_backbone_key_maps_exactly(variant, shapes):
    """The authors' COCO/ADE20K backbones (keys under backbone., extra_norms, no norm/head): every backbone key maps
    onto one model key with its shape; extra_norms are left to the mm adapter, and the final norm and head (which
    the checkpoint lacks) keep the model's own values."""
    extra = sorted(k for k in shapes if k.startswith('backbone.extra_norms.'))
    assert extra == [f'backbone.extra_norms.{i}.{w}' for i in range(4) for w in ('bias', 'weight')]
    with torch.device('meta'):
        model = timm.create_model(f'zoo_{variant}')
        mapped = checkpoint_filter_fn({k: torch.empty(s) for k, s in shapes.items()}, model)
    ours = model.state_dict()
    own = [k for k in ours if k.startswith(('norm.', 'head.'))]
    assert sorted(mapped) == sorted(ours)
    assert len(mapped) == len(shapes) - len(extra) + len(own)
    assert {k: v.shape for k, v in mapped.items() if v.shape != ours[k].shape} == {}


@pytest.mark.parametrize('name, params, heads', [
    ('zoo_biformer_tiny', 13.1e6, (2, 4, 8)), ('zoo_biformer_small', 25.5e6, (2, 4, 8)),
    ('zoo_biformer_base', 56.8e6, (3, 6, 12)), ('zoo_biformer_stl', 28.4e6, (3, 6, 12))])
def test_variants_match_the_paper(name, params, heads):
    """Parameter counts of the original README; BRA heads = qk_dim / 32 with the softmax scale over the whole qk
    width; stage 4 is global attention with 8 heads."""
    with torch.device('meta'):
        model = timm.create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) - params) < 0.05e6
    for stage, h, topk in zip(model.stages[:3], heads, (1, 4, 16)):
        attn = stage.blocks[0].attn
        assert (attn.num_heads, attn.topk, attn.n_win) == (h, topk, 7)
        assert attn.scale == attn.qk_dim ** -0.5
    assert model.stages[3].blocks[0].attn.num_heads == 8
    assert model.pretrained_cfg['license'] == 'mit'


def test_n_win_is_a_construction_argument():
    with torch.device('meta'):
        model = timm.create_model('zoo_biformer_small', n_win=16)
        per_stage = timm.create_model('zoo_biformer_stl', n_win=(7, 8, 4, 1))
    assert [s.blocks[0].attn.n_win for s in model.stages[:3]] == [16, 16, 16]
    assert [s.blocks[0].attn.n_win for s in per_stage.stages[:3]] == [7, 8, 4]


def test_errors_name_the_constraint():
    with pytest.raises(ValueError, match=r'topk must be in \[1, n_win\*\*2\] = \[1, 9\]'):
        timm.create_model('zoo_biformer_tiny', n_win=3)  # stage 3 routes to 16 regions
    with pytest.raises(ValueError, match='one entry per stage'):
        timm.create_model('zoo_biformer_tiny', depths=(1, 1, 1))
    with pytest.raises(ValueError, match='multiple of head_dim'):
        timm.create_model('zoo_biformer_tiny', head_dim=24)
    with pytest.raises(ValueError, match="stem_type must be 'conv' or 'patch'"):
        timm.create_model('zoo_biformer_tiny', stem_type='overlap')


def test_large_maps_call_routed_attention_per_group_of_heads(monkeypatch):
    """Above a size, BRA runs routed_attention per group of heads (bounding its region-major copies): same numbers,
    forward and backward, auto_pad and masked."""
    torch.manual_seed(0)
    calls = []
    original = biformer.routed_attention

    def counting(q, *args, **kwargs):
        calls.append(q.shape[1])
        return original(q, *args, **kwargs)

    for mask in (False, True):
        attn = BiLevelRoutingAttention(24, num_heads=3, n_win=4, topk=3, mask_padding=mask).double()
        x = torch.randn(2, 9, 14, 24, dtype=torch.float64, requires_grad=True)
        whole = attn(x)
        (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
        calls.clear()
        monkeypatch.setattr(biformer, 'routed_attention', counting)
        monkeypatch.setattr(biformer, '_ROUTED_CALL_ELEMENTS', 1000)
        split = attn(x)
        (g_split,) = torch.autograd.grad(split.square().sum(), x)
        monkeypatch.undo()
        assert calls == [1, 1, 1]
        assert_rel_close(split, whole, rel=1e-12)
        assert_rel_close(g_split, g_whole, rel=1e-12)


def test_mlp_recomputes_gelu_exactly():
    """The MLP's GELU+fc2 saves fc1's output only and recomputes the GELU in backward: the gradients of timm's Mlp."""
    torch.manual_seed(0)
    mlp = biformer.BiFormerMlp(8, 24).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mlp(t), (x,))
    out = mlp(x)
    plain = mlp.fc2(F.gelu(mlp.fc1(x)))
    torch.testing.assert_close(out, plain)
    grads = torch.autograd.grad(out.sum(), (x, mlp.fc1.weight, mlp.fc2.weight, mlp.fc2.bias))
    expected = torch.autograd.grad(plain.sum(), (x, mlp.fc1.weight, mlp.fc2.weight, mlp.fc2.bias))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), plain)


@torch.no_grad()
def test_compiles_as_one_graph():
    """torch.compile(fullgraph=True) traces the whole model, kernels included, auto_pad and masked (no graph break)."""
    x = torch.randn(1, 3, 96, 128)
    for mask in (False, True):
        torch.manual_seed(0)
        model = timm.create_model('zoo_biformer_tiny', depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), head_dim=8,
                                  mask_padding=mask).eval()
        compiled = torch.compile(model, backend='eager', fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
