"""TransNeXt: parity with the original implementation (all resolution modes), gradients, checkpoint formats, sizes.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is TransNeXt's own.
Fixtures (made by running DaiShiResearch/TransNeXt's own code, see their `source`):
  transnext_parity.safetensors      classification/transnext.py + attention_native.py, a small model (head dim 24,
                                    heads 1/2/3/4, one block per stage) at img_size 96 with pretrain_size 64 (the
                                    coordinate normalisation of the 384 fine-tunes): input, logits, the four stage-norm
                                    outputs (``features.N``), gradients (``grad.*``), and with the same weights and
                                    input ``fixed_pool.*``: logits and features with ``fixed_pool_size=2``;
  transnext_det_parity.safetensors  detection/maskrcnn/transnext_native.py, the same small model built for
                                    img_size 64 and run at 90x130 (every stage map differs from the trained one,
                                    non-square and odd): the four features and gradients in the default bias
                                    interpolation mode, and ``extrapolate.*`` with ``is_extrapolation=True``;
  transnext_original_keys.json.gz   the original state dict's key -> shape for transnext_{micro,tiny,small,base}.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

import zoo  # noqa: F401  (registers the zoo models)
from kernels import use_backend
from tests.parity import (
    FIXTURES,
    assert_original_keys_map_exactly,
    assert_rel_close,
    load_parity_fixture,
    original_key_shapes,
    perturbed,
)
from zoo.layers import rename_pvt_key
from zoo.models import transnext
from zoo.models.transnext import _resize_bilinear, checkpoint_filter_fn

# the fixtures' small model: head dim 24 as every variant, one block per stage
SMALL = dict(embed_dims=(24, 48, 72, 96), num_heads=(1, 2, 3, 4), mlp_ratios=(4, 4, 2, 2), depths=(1, 1, 1, 1))


def _tensors(name):
    with safe_open(FIXTURES / f'{name}.safetensors', framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope='module')
def cls_fixture():
    return load_parity_fixture('transnext_parity'), _tensors('transnext_parity')


@pytest.fixture(scope='module')
def det_fixture():
    return load_parity_fixture('transnext_det_parity'), _tensors('transnext_det_parity')


def create_from(fixture, path, **kwargs):
    """The fixture's model with the original-format file as its pretrained weights."""
    kwargs = dict(fixture.model_kwargs, **kwargs)
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    return timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def _check_grads(model, x, loss_fn, expected, prefix=''):
    """Gradients of the input and of every attention parameter the fixture holds (first block of each stage)."""
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    loss_fn(model, x).backward()
    assert_rel_close(x.grad, expected[prefix + 'grad.input'], msg='input')
    checked = 0
    for key, grad in expected.items():
        if not key.startswith(prefix + 'grad.block'):
            continue
        name = rename_pvt_key(key[len(prefix + 'grad.'):])
        actual = getattr(model, 'model', model).get_parameter(name).grad  # features_only wraps the model
        if name == 'stages.3.blocks.0.attn.cpb_fc2.bias':
            # stage 4 adds the CPB to every key, so a per-head constant cancels in the softmax: the true gradient is
            # 0 and both sides hold rounding noise; check that it is noise next to the weight's gradient
            scale = expected[key.replace('.bias', '.weight')].abs().max()
            assert actual.abs().max() < 1e-5 * scale and grad.abs().max() < 1e-5 * scale
        else:
            assert_rel_close(actual, grad, msg=name)
        checked += 1
    assert checked >= 30


def test_parity_with_the_classification_model(cls_fixture, tmp_path):
    fixture, t = cls_fixture
    path = fixture.save_original_checkpoint(tmp_path / 'transnext_small.pth')
    model = create_from(fixture, path)
    with torch.no_grad():
        assert_rel_close(model(fixture.input), fixture.output)
        features = create_from(fixture, path, features_only=True)(fixture.input)
    for i, feat in enumerate(features):
        assert_rel_close(feat, t[f'features.{i}'], msg=f'stage {i}')
    _check_grads(model, fixture.input, lambda m, x: m(x).square().sum(), t)


@torch.no_grad()
def test_fixed_pool_size_linear_inference_mode(cls_fixture, tmp_path):
    fixture, t = cls_fixture
    path = fixture.save_original_checkpoint(tmp_path / 'transnext_small.pth')
    model = create_from(fixture, path, fixed_pool_size=2)
    assert_rel_close(model(fixture.input), t['fixed_pool.output'])
    for i, feat in enumerate(model.forward_intermediates(fixture.input, intermediates_only=True)):
        assert_rel_close(feat, t[f'fixed_pool.features.{i}'], msg=f'stage {i}')
    # 2x2 pooled keys at stages 1-3 whatever the input size
    assert [s.pool_size(40, 60) for s in model.stages] == [(2, 2), (2, 2), (2, 2), (40, 60)]
    with pytest.raises(ValueError, match='fixed_pool_size 7'):
        timm.create_model('zoo_transnext_micro', img_size=96, fixed_pool_size=7, **SMALL)


@pytest.mark.parametrize('mode', ['interpolate', 'extrapolate'])
def test_parity_with_the_detection_backbone_at_another_size(det_fixture, tmp_path, mode):
    fixture, t = det_fixture
    prefix = '' if mode == 'interpolate' else 'extrapolate.'
    path = fixture.save_original_checkpoint(tmp_path / 'backbone.pth')
    model = create_from(fixture, path, features_only=True, cpb_mode=mode)
    with torch.no_grad():
        features = model(fixture.input)
    for i, feat in enumerate(features):
        assert_rel_close(feat, t[f'{prefix}features.{i}'], msg=f'{mode} stage {i}')
    _check_grads(model, fixture.input, lambda m, x: sum(f.square().mean() for f in m(x)), t, prefix)


def test_the_detection_fixture_tells_the_modes_apart(det_fixture):
    """At 90x130 for a model laid out for 64x64 the two bias modes give different features (beyond the parity
    bar), so each parity test above checks its own mode."""
    _, t = det_fixture
    for i in range(4):
        a, b = t[f'features.{i}'], t[f'extrapolate.features.{i}']
        assert (a - b).abs().max() > 1e-3 * b.abs().max()


@torch.no_grad()
def test_interpolation_is_the_identity_at_the_trained_size():
    torch.manual_seed(0)
    model = perturbed(timm.create_model('zoo_transnext_micro', img_size=128, pretrain_size=64, **SMALL))
    extrapolating = timm.create_model('zoo_transnext_micro', img_size=128, pretrain_size=64, cpb_mode='extrapolate',
                                      **SMALL).eval()
    extrapolating.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 128, 128)
    assert_rel_close(model(x), extrapolating(x))
    geo = model.stages[0].geometry(32, 32, x.device)
    assert geo.axis_h.resize is None and geo.axis_w.resize is None


def _record_bias_tables(monkeypatch):
    calls = []
    op = transnext.neighborhood_attention

    def recording(q, *args, **kwargs):
        calls.append((tuple(q.shape), tuple(kwargs['extra_k'].shape), tuple(kwargs['extra_bias_table'].shape)))
        assert kwargs.get('extra_bias') is None
        return op(q, *args, **kwargs)

    monkeypatch.setattr(transnext, 'neighborhood_attention', recording)
    return calls


@torch.no_grad()
def test_bias_stays_factored(monkeypatch):
    """Every attention gets the CPB as a (heads, Th, Tw) table: at the trained size and in extrapolate mode it is
    far smaller than the (heads, H*W, M) bias the original gathers."""
    calls = _record_bias_tables(monkeypatch)
    for mode in ('interpolate', 'extrapolate'):
        model = timm.create_model('zoo_transnext_micro', cpb_mode=mode, **SMALL).eval()
        calls.clear()
        model(torch.randn(1, 3, 224, 224) if mode == 'interpolate' else torch.randn(1, 3, 256, 320))
        assert len(calls) == 4
        for (_, heads, h, w, _), (_, _, m, _), (t_heads, th, tw) in calls:
            assert t_heads == heads and th * tw * 4 < h * w * m, (mode, h, w, m, th, tw)


def test_stage4_full_attention_excludes_its_window_key():
    """Stage 4 runs the op with a 1x1 window whose key is excluded (bias -3e4) and all tokens as extra keys: the
    same as plain softmax attention with the CPB bias, the cosine scale and log(N), on every CPU backend, with
    gradients."""
    torch.manual_seed(0)
    model = perturbed(timm.create_model('zoo_transnext_micro', **SMALL))
    stage = model.stages[3]
    attn = stage.blocks[0].attn
    x = torch.randn(2, 5, 7, 96, requires_grad=True)
    geo = stage.geometry(5, 7, x.device)

    def plain(x):
        q, k, v = attn.qkv(x).view(2, 35, 3, 4, 24).permute(2, 0, 3, 1, 4)
        q = (F.normalize(q, dim=-1) + attn.query_embedding) * F.softplus(attn.temperature) * math.log(35)
        ih, iw = geo.out_index
        bias = attn.cpb_table(geo, q.dtype)[:, ih[:, None, :, None], iw[None, :, None, :]].reshape(4, 35, 35)
        scores = q @ F.normalize(k, dim=-1).transpose(-2, -1) + bias
        return attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 7, 96))

    results = []
    for run, backend in ((plain, None), (attn, 'reference'), (attn, 'cpu')):
        x.grad = None
        attn.zero_grad()
        with use_backend(backend or 'cpu'):
            out = run(x) if backend is None else run(x, geo)
        out.square().sum().backward()
        results.append((out.detach(), x.grad.clone(), attn.temperature.grad.clone(), attn.cpb_fc2.weight.grad.clone()))
    for result in results[1:]:
        for a, b in zip(result, results[0]):
            assert torch.isfinite(a).all()
            assert_rel_close(a, b)


@pytest.mark.parametrize('size', [(800, 1216), (225, 239)])
@torch.no_grad()
def test_features_only_at_detection_and_odd_sizes(size):
    torch.manual_seed(0)
    model = timm.create_model('zoo_transnext_micro', features_only=True, **SMALL).eval()
    features = model(torch.randn(1, 3, *size))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert len(features) == 4
    for feat, chs, red in zip(features, model.feature_info.channels(), model.feature_info.reduction()):
        assert feat.shape == (1, chs, math.ceil(size[0] / red), math.ceil(size[1] / red))
        assert torch.isfinite(feat).all()


def test_too_small_input_names_the_constraint():
    model = timm.create_model('zoo_transnext_micro', **SMALL).eval()
    with pytest.raises(ValueError, match='at least 8 on each side'):
        model(torch.randn(1, 3, 24, 64))


@torch.no_grad()
def test_cpu_backend_equals_the_reference_backend():
    torch.manual_seed(0)
    model = perturbed(timm.create_model('zoo_transnext_micro', **SMALL))
    x = torch.randn(1, 3, 90, 130)
    with use_backend('reference'):
        expected = model.forward_intermediates(x, intermediates_only=True)
    with use_backend('cpu'):
        for feat, ref in zip(model.forward_intermediates(x, intermediates_only=True), expected):
            assert_rel_close(feat, ref)


def test_filter_formats(cls_fixture, det_fixture):
    fixture, _ = cls_fixture
    converted = checkpoint_filter_fn(dict(fixture.state_dict), None)
    assert 'stem.proj.weight' in converted and 'stages.3.blocks.0.attn.qkv.weight' in converted
    assert 'stages.0.blocks.0.mlp.dwconv.weight' in converted and 'head.fc.weight' in converted
    assert checkpoint_filter_fn(dict(converted), None) == converted
    assert checkpoint_filter_fn({'model': dict(fixture.state_dict)}, None).keys() == converted.keys()
    # the original's non-persistent buffers, should an export carry them, are dropped
    with_buffers = dict(fixture.state_dict, relative_pos_index1=torch.zeros(3), **{
        'block1.0.attn.seq_length_scale': torch.zeros(3), 'block1.0.attn.padding_mask': torch.zeros(3)})
    assert checkpoint_filter_fn(with_buffers, None).keys() == converted.keys()
    # a detection/segmentation checkpoint: the backbone's keys under `backbone.`, beside the heads
    det, _ = det_fixture
    mm = {'meta': {}, 'state_dict': {**{f'backbone.{k}': v for k, v in det.state_dict.items()},
                                     'neck.lateral_convs.0.conv.weight': torch.zeros(1)}}
    assert checkpoint_filter_fn(mm, None).keys() == checkpoint_filter_fn(dict(det.state_dict), None).keys()


@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('transnext').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(f'zoo_{variant}', shapes, checkpoint_filter_fn)
    if variant in ('transnext_small', 'transnext_base'):  # the 384 fine-tunes have the same keys
        assert_original_keys_map_exactly(f'zoo_{variant}_384', shapes, checkpoint_filter_fn)


def test_variants_and_cfgs():
    for name, heads in (('micro', 2), ('tiny', 3), ('small', 3), ('base', 4)):
        with torch.device('meta'):
            model = timm.create_model(f'zoo_transnext_{name}')
        assert model.stages[0].blocks[0].attn.head_dim == 24 and model.stages[0].blocks[0].attn.num_heads == heads
    with torch.device('meta'):
        m384 = timm.create_model('zoo_transnext_small_384')
    assert m384.pretrained_cfg['input_size'] == (3, 384, 384) and m384.pretrained_cfg['crop_pct'] == 1.0
    assert m384.img_size == (384, 384) and m384.pretrain_size == (224, 224)
    assert m384.stages[0].trained_size == (96, 96) and m384.stages[0].pretrain_size == (56, 56)


@pytest.mark.parametrize('shape, size', [((2, 26, 14, 7), (64, 32)), ((1, 3, 5, 9), (4, 20)), ((2, 3, 7, 7), (7, 7))])
def test_separable_bilinear_resize_equals_interpolate(shape, size):
    """The CPB's interpolate mode resizes with two matmuls; the numbers are F.interpolate's (up and down)."""
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(_resize_bilinear(x, size), F.interpolate(x, size=size, mode='bilinear'))
