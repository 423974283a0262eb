"""LITv2 (HiLo attention): parity with the original implementation, its DCN, and any input size.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is LITv2's own.
Fixtures, made by running ziplab/LITv2's code (see each file's `source`):
  litv2_parity.safetensors      a small LITv2 from classification/models/litv2.py with trained-looking random weights:
                                input, logits, the four stage outputs (``features.N``), gradients of a fixed linear
                                function of the logits (``grad.input``, ``grad.ckpt.<original key>``) and the original
                                state dict;
  litv2_det_parity.safetensors  the same weights in the original detection backbone (detection/mmdet/.../litv2.py):
                                stage outputs for a non-square input, and the stage-4 output at 800x1216;
  litv2_hilo.safetensors        the original HiLo module in its edge cases (alpha 0 and 1, window 1 and 4, no qkv bias);
  litv2_dcn.safetensors         input, offset, weight, bias and output of the authors' deformable-conv formulation;
  litv2_original_keys.json.gz   the original state dict's key -> shape for litv2_small / medium / base.
"""
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torchvision.ops import deform_conv2d

from tests.parity import (
    FIXTURES,
    assert_original_keys_map_exactly,
    assert_rel_close,
    load_parity_fixture,
    original_key_shapes,
    perturbed,
)
from zoo.models.litv2 import DeformableTokenMerging, HiLoAttention, checkpoint_filter_fn


def read(name):
    with safe_open(FIXTURES / f'{name}.safetensors', framework='pt') as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope='module')
def fixture():
    return load_parity_fixture('litv2_parity')


@pytest.fixture(scope='module')
def extra():
    return read('litv2_parity')[1]


@pytest.fixture(scope='module')
def original_file(fixture, tmp_path_factory):
    return fixture.save_original_checkpoint(tmp_path_factory.mktemp('litv2') / 'litv2_original.pth')


def create_from(fixture, path, **kwargs):
    """The fixture's model with the original-format file as its pretrained weights."""
    kwargs = dict(fixture.model_kwargs, **kwargs)
    # the file's classifier has the fixture's class count; saying so keeps timm from dropping it as a mismatch
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    return timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


@pytest.fixture(scope='module')
def model(fixture, original_file):
    return create_from(fixture, original_file)


# --- the whole model against the original -------------------------------------------------------------------------

@torch.no_grad()
def test_parity_with_original_checkpoint(fixture, model):
    assert_rel_close(model(fixture.input), fixture.output)


@torch.no_grad()
def test_features_are_the_original_stage_outputs(fixture, extra, original_file):
    backbone = create_from(fixture, original_file, features_only=True)
    features = backbone(fixture.input)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert len(features) == 4
    for i, feat in enumerate(features):
        assert_rel_close(feat, extra[f'features.{i}'], msg=f'stage {i}')
    subset = create_from(fixture, original_file, features_only=True, out_indices=(1, 3))
    for feat, i in zip(subset(fixture.input), (1, 3)):
        assert_rel_close(feat, extra[f'features.{i}'], msg=f'stage {i}')


def test_gradients_match_the_original(fixture, extra, model):
    """Backward through every part (HiLo, full attention, DTM with torchvision's deformable conv, ConvFFN) equals the
    original's autograd through its own formulation, for the input and the parameters."""
    model.zero_grad()
    x = fixture.input.clone().requires_grad_()
    (model(x) * extra['grad_output']).sum().backward()
    assert_rel_close(x.grad, extra['grad.input'], msg='input')
    original = {k[len('grad.ckpt.'):]: v for k, v in extra.items() if k.startswith('grad.ckpt.')}
    assert len(original) > 40 and any('conv_offset' in k for k in original)
    params = dict(model.named_parameters())
    for key, grad in checkpoint_filter_fn(original, None).items():
        assert_rel_close(params[key].grad, grad, msg=key)
    model.zero_grad()


def test_batch_of_one_has_the_same_gradients(fixture, extra, model):
    """torch 2.14.1 computes BatchNorm2d's eval backward wrongly for a batch of one when the gradient arrives in the
    layout of the original DTM (``flatten(2).transpose(1, 2)``; the fixture was made at batch 2 for that reason). The
    zoo's DTM must not hit it: one image gives the first row of the batch-2 gradients."""
    model.zero_grad()
    x = fixture.input[:1].clone().requires_grad_()
    (model(x) * extra['grad_output'][:1]).sum().backward()
    assert_rel_close(x.grad, extra['grad.input'][:1])
    model.zero_grad()


@torch.no_grad()
def test_deformable_offsets_matter(fixture, original_file, model):
    """The parity above really goes through the deformable sampling: with the offsets zeroed the output moves."""
    plain = create_from(fixture, original_file)
    for stage in plain.stages[1:]:
        stage.downsample.dconv.conv_offset.weight.zero_()
        stage.downsample.dconv.conv_offset.bias.zero_()
    out, expected = plain(fixture.input), fixture.output
    assert (out - expected).abs().max() > 100 * 1e-4 * expected.abs().max()


def test_loads_the_original_release_layout(fixture, tmp_path):
    """The authors' save_checkpoint writes {'model': state_dict, 'optimizer', 'lr_scheduler', 'max_accuracy',
    'epoch', ...}; the filter takes that, and a flat state dict."""
    nested = tmp_path / 'litv2_nested.pth'
    torch.save(dict(model=fixture.state_dict, optimizer=dict(state={}, param_groups=[]), lr_scheduler={},
                    max_accuracy=82.0, epoch=299), nested)
    flat = tmp_path / 'litv2_flat.pth'
    torch.save(fixture.state_dict, flat)
    for path in (nested, flat):
        with torch.no_grad():
            assert_rel_close(create_from(fixture, path)(fixture.input), fixture.output, msg=path.name)


def test_filter_passes_our_format_through_and_unwraps(fixture):
    converted = checkpoint_filter_fn(dict(fixture.state_dict), None)
    assert 'stages.1.downsample.dconv.conv_offset.weight' in converted  # layers.0.downsample -> stage 1
    assert 'stages.0.blocks.0.mlp.dwconv.weight' in converted
    assert checkpoint_filter_fn(dict(converted), None) == converted
    for wrapper in ('state_dict', 'model'):
        assert checkpoint_filter_fn({wrapper: dict(fixture.state_dict)}, None).keys() == converted.keys()
        assert checkpoint_filter_fn({wrapper: dict(converted)}, None) == converted


@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('litv2').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(f'zoo_{variant}', shapes, checkpoint_filter_fn)


def test_base_384_is_the_base_architecture():
    shapes = original_key_shapes('litv2')['litv2_base']
    assert_original_keys_map_exactly('zoo_litv2_base_384', shapes, checkpoint_filter_fn)
    with torch.device('meta'):
        cfg = timm.create_model('zoo_litv2_base_384').pretrained_cfg
    assert cfg['input_size'] == (3, 384, 384) and cfg['url'].endswith('/v1.0/litv2_b_384.pth')


# --- HiLo against the original module --------------------------------------------------------------------------

HILO_META, HILO = read('litv2_hilo')


@pytest.mark.parametrize('case', sorted(json.loads(HILO_META['cases'])))
@torch.no_grad()
def test_hilo_matches_the_original_module(case):
    c = json.loads(HILO_META['cases'])[case]
    attn = HiLoAttention(32, num_heads=c['num_heads'], qkv_bias=c.get('qkv_bias', True),
                         window_size=c['window_size'], alpha=c['alpha']).eval()
    state = {k[len(case) + 4:]: v for k, v in HILO.items() if k.startswith(f'{case}.sd.')}
    attn.load_state_dict(state)  # strict: the same parameters exist (e.g. no Hi-Fi ones for alpha 1 or window 1)
    x = HILO['input']
    out = attn(x.view(2, 8, 8, 32)).reshape(2, 64, 32)
    assert_rel_close(out, HILO[f'{case}.output'])


def test_hilo_head_split_follows_the_original():
    assert (HiLoAttention(384, 12, alpha=0.9).l_heads, HiLoAttention(384, 12, alpha=0.9).h_heads) == (10, 2)
    assert (HiLoAttention(512, 16, alpha=0.9).l_heads, HiLoAttention(512, 16, alpha=0.9).h_heads) == (14, 2)
    full = HiLoAttention(768, 24, alpha=0.9, window_size=1)
    assert (full.l_heads, full.h_heads) == (24, 0) and not hasattr(full, 'h_qkv')
    with pytest.raises(ValueError, match='window_size'):
        HiLoAttention(64, 2, window_size=0)
    with pytest.raises(ValueError, match='multiple of num_heads'):
        HiLoAttention(64, 3)


def hilo_reference(attn, x):
    """HiLo written out window by window and cell by cell, for any map: a partial window/cell at the bottom/right
    holds only the real tokens (nothing padded attends or is attended to, nothing padded is averaged)."""
    B, H, W, C = x.shape
    s, d, outs = attn.ws, attn.head_dim, []
    if attn.h_heads:
        qkv = attn.h_qkv(x).view(B, H, W, 3, attn.h_heads, d)
        out = torch.zeros(B, H, W, attn.h_heads, d, dtype=x.dtype)
        for i in range(0, H, s):
            for j in range(0, W, s):
                win = qkv[:, i:i + s, j:j + s].flatten(1, 2)  # B, n, 3, heads, d (n real tokens only)
                q, k, v = win.unbind(2)
                a = torch.einsum('bnhd,bmhd->bhnm', q, k).mul(attn.scale).softmax(-1)
                o = torch.einsum('bhnm,bmhd->bnhd', a, v)
                out[:, i:i + s, j:j + s] = o.view(B, min(s, H - i), min(s, W - j), attn.h_heads, d)
        outs.append(attn.h_proj(out.flatten(3)))
    if attn.l_heads:
        q = attn.l_q(x).view(B, H * W, attn.l_heads, d)
        if s > 1:
            cells = [x[:, i:i + s, j:j + s].mean((1, 2)) for i in range(0, H, s) for j in range(0, W, s)]
            pooled = torch.stack(cells, 1)
        else:
            pooled = x.flatten(1, 2)
        k, v = attn.l_kv(pooled).view(B, -1, 2, attn.l_heads, d).unbind(2)
        a = torch.einsum('bnhd,bmhd->bhnm', q, k).mul(attn.scale).softmax(-1)
        outs.append(attn.l_proj(torch.einsum('bhnm,bmhd->bnhd', a, v).reshape(B, H, W, -1)))
    return torch.cat(outs, -1)


@pytest.mark.parametrize('case', ['mixed', 'half_ws4', 'hifi_only', 'lofi_only', 'ws1'])
@pytest.mark.parametrize('size', [(8, 8), (7, 9), (5, 3), (1, 2)])
@torch.no_grad()
def test_hilo_any_size_masks_padded_keys(case, size):
    """At maps that are not multiples of the window, Hi-Fi windows are padded inside the kernel with the padded keys
    masked out and Lo-Fi cells average their real tokens; at multiples (8x8) this reference is the original (the
    module matches the original fixture above on the same weights)."""
    c = json.loads(HILO_META['cases'])[case]
    attn = HiLoAttention(32, num_heads=c['num_heads'], window_size=c['window_size'], alpha=c['alpha']).eval()
    attn.load_state_dict({k[len(case) + 4:]: v for k, v in HILO.items() if k.startswith(f'{case}.sd.')})
    if size == (8, 8):
        x = HILO['input'].view(2, 8, 8, 32)
        assert_rel_close(hilo_reference(attn, x).reshape(2, 64, 32), HILO[f'{case}.output'])
    x = torch.randn(2, *size, 32, generator=torch.Generator().manual_seed(5))
    assert_rel_close(attn(x), hilo_reference(attn, x))


# --- the deformable convolution --------------------------------------------------------------------------------

DCN_META, DCN = read('litv2_dcn')


@pytest.mark.parametrize('case', sorted(json.loads(DCN_META['cases'])))
def test_torchvision_deform_conv_equals_the_original_dcn(case):
    """Same tensors, same numbers: torchvision reads the offsets in the original DCN's layout (y then x per kernel
    tap, taps row-major) and samples bilinearly with zeros outside the map, as the authors' kernel does."""
    c = json.loads(DCN_META['cases'])[case]
    t = {k: DCN[f'{case}.{k}'] for k in ('input', 'offset', 'weight', 'bias', 'output')}
    out = deform_conv2d(t['input'], t['offset'], t['weight'], t['bias'], stride=c['stride'], padding=c['padding'])
    assert_rel_close(out, t['output'])
    # the check can fail: the x/y order of the offsets matters on these tensors
    kk = t['offset'].shape[1] // 2
    swapped = t['offset'].view(-1, kk, 2, *t['offset'].shape[-2:]).flip(2).reshape(t['offset'].shape)
    wrong = deform_conv2d(t['input'], swapped, t['weight'], t['bias'], stride=c['stride'], padding=c['padding'])
    assert (wrong - t['output']).abs().max() > 0.1 * t['output'].abs().max()


def _dtm(seed=0):
    torch.manual_seed(seed)
    dtm = perturbed(DeformableTokenMerging(6, 12), seed)
    with torch.no_grad():
        dtm.dconv.conv_offset.weight.normal_(0, 0.5)  # offsets of a pixel or so
    return dtm


@torch.no_grad()
def test_dtm_at_odd_sizes_keeps_the_original_outputs():
    """An odd map gets a zero row/column before DTM: the original (which floors) is reproduced on its rows and columns,
    and one more row/column is added, so the merged map is ceil(H / 2) x ceil(W / 2)."""
    dtm = _dtm()
    x = torch.randn(2, 9, 7, 6, generator=torch.Generator().manual_seed(6))  # NHWC
    out = dtm(x)
    assert out.shape == (2, 5, 4, 12)
    xc = x.permute(0, 3, 1, 2)
    d = dtm.dconv
    floor = deform_conv2d(xc, d.conv_offset(xc), d.weight, d.bias, stride=2)  # the original's 4 x 3 output
    floor = dtm.act(dtm.norm(floor)).permute(0, 2, 3, 1)
    assert_rel_close(out[:, :4, :3], floor)


def test_dtm_runs_in_bfloat16():
    dtm = _dtm()
    x = torch.randn(1, 8, 8, 6)
    ref = dtm(x)
    out = dtm.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert_rel_close(out.float(), ref, rel=5e-2)


def test_dtm_trains_under_float16_autocast_on_the_cpu():
    """torchvision's CPU deform_conv2d takes no float16: under fp16 autocast (the offsets come out of the conv in
    float16, the weight stays float32) the merging computes it in float32 and gives a float16 result."""
    dtm = _dtm()
    x = torch.randn(1, 8, 8, 6, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.float16):
        out = dtm(x)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dtm.parameters())
    with torch.no_grad():
        assert_rel_close(out.detach().float(), dtm(x), rel=5e-2)


# --- any input size --------------------------------------------------------------------------------------------

DET_META, DET = read('litv2_det_parity')


def det_input(h, w):
    """The deterministic image the detection fixture's 800x1216 run used (its `source` names this function)."""
    c = torch.arange(3, dtype=torch.float32).view(3, 1, 1)
    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    return (torch.sin(0.031 * (c + 1) * yy + 0.5 * c) * torch.cos(0.017 * (c + 2) * xx) + 0.25 * c - 0.25)[None]


@pytest.fixture(scope='module')
def backbone(fixture, original_file):
    return create_from(fixture, original_file, features_only=True)


@torch.no_grad()
def test_non_square_input_matches_the_original_detection_backbone(backbone):
    features = backbone(DET['small.input'])
    for i, feat in enumerate(features):
        assert_rel_close(feat, DET[f'small.features.{i}'], msg=f'stage {i}')


@torch.no_grad()
def test_detection_size_800x1216_matches_the_original_detection_backbone(backbone):
    features = backbone(det_input(800, 1216))
    assert [tuple(f.shape[-2:]) for f in features] == [(200, 304), (100, 152), (50, 76), (25, 38)]
    assert_rel_close(features[3], DET['large.features.3'])


@pytest.mark.parametrize('size', [(225, 239), (97, 131), (33, 65), (31, 31)])
@torch.no_grad()
def test_features_at_odd_sizes(backbone, model, size):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(7))
    features = backbone(x)
    assert len(features) == 4
    for feat, stride, chs in zip(features, (4, 8, 16, 32), backbone.feature_info.channels()):
        assert feat.shape == (1, chs, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(feat).all()
    assert torch.isfinite(model(x)).all()


@torch.no_grad()
def test_stem_pads_with_zeros_as_the_original_backbone(backbone):
    """An input that is not a multiple of 4 is zero-padded at the bottom/right by the stem (as the original detection
    backbone's PatchEmbed does): 62x94 gives the features of the same image zero-padded to 64x96."""
    x = DET['small.input'][:, :, :62, :94]
    for a, b in zip(backbone(x), backbone(F.pad(x, (0, 2, 0, 2)))):
        torch.testing.assert_close(a, b)
