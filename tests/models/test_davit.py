"""DaViT: parity with timm's DaVit and with the original implementation, checkpoint formats, padding semantics.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is DaViT's own.
Fixtures (made by running dingmyu/davit's timm/models/davit.py, see their `source`):
  davit_parity.safetensors        a small DaViT (window 3, stage maps 24/12/6/3) with random weights: input,
                                  logits and the original state dict (nested under `state_dict`, as the authors'
                                  training script saved it);
  davit_original_keys.json.gz     the original state dict's key -> shape for DaViT_tiny, _small and _base.
"""
import math

import pytest
import timm
import torch
from safetensors.torch import save_file

import zoo  # noqa: F401  (registers the zoo models)
from tests.parity import (
    assert_original_keys_map_exactly,
    assert_rel_close,
    load_parity_fixture,
    original_key_shapes,
    perturbed,
)
from zoo.models.davit import DaViT, SpatialBlock, checkpoint_filter_fn

# a small DaViT-tiny: every code path of the tiny variant, a fraction of its cost
SMALL = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))


@pytest.fixture(scope='module')
def timm_small():
    torch.manual_seed(0)
    return perturbed(timm.create_model('davit_tiny', **SMALL))


@pytest.fixture(scope='module')
def zoo_small(timm_small):
    model = timm.create_model('zoo_davit_tiny', **SMALL).eval()
    model.load_state_dict(timm_small.state_dict())
    return model


@pytest.mark.parametrize('size', [(224, 224), (224, 448)])
@torch.no_grad()
def test_equals_timm_where_every_map_is_a_multiple_of_the_window(timm_small, zoo_small, size):
    x = torch.randn(2, 3, *size)
    assert_rel_close(zoo_small(x), timm_small(x))
    ours = zoo_small.forward_intermediates(x, intermediates_only=True)
    theirs = timm_small.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(ours, theirs):
        assert_rel_close(a, b)


def test_gradients_equal_timm(timm_small, zoo_small):
    x = torch.randn(1, 3, 224, 224)
    grads = []
    for model in (timm_small, zoo_small):
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert_rel_close(grads[1][n], g, msg=n)


def _attention_over_valid_keys(block: SpatialBlock, x: torch.Tensor) -> torch.Tensor:
    """The spatial attention as it should be at any size: timm's WindowAttention run on the real tokens of each
    7x7 window alone (windows at the bottom/right border are smaller), so no padded token is ever a key."""
    B, C, H, W = x.shape
    wh, ww = block.window_size
    tokens = block.norm1(block.cpe1(x).flatten(2).transpose(1, 2)).view(B, H, W, C)
    out = torch.empty_like(tokens)
    for top in range(0, H, wh):
        for left in range(0, W, ww):
            window = tokens[:, top:top + wh, left:left + ww]
            h, w = window.shape[1:3]
            attended = super(type(block.attn), block.attn).forward(window.reshape(B, h * w, C))  # timm's forward
            out[:, top:top + wh, left:left + ww] = attended.view(B, h, w, C)
    return out


@pytest.mark.parametrize('size', [(9, 10), (7, 7), (3, 16)])
@torch.no_grad()
def test_window_attention_ignores_padding(zoo_small, timm_small, size):
    """Ours attends to the real tokens of each window only; timm's zero-padded tokens are keys too."""
    block = zoo_small.stages[1].blocks[0][0]
    assert isinstance(block, SpatialBlock)
    x = torch.randn(2, block.dim, *size)
    B, C, H, W = x.shape
    tokens = block.norm1(block.cpe1(x).flatten(2).transpose(1, 2)).view(B, H, W, C)
    expected = _attention_over_valid_keys(block, x)
    assert_rel_close(block.attn(tokens), expected)

    # the whole block: ours equals timm's at a multiple of the window and differs elsewhere
    theirs = timm_small.stages[1].blocks[0][0](x)
    if H % 7 or W % 7:
        assert (block(x) - theirs).abs().max() > 1e-3 * theirs.abs().max()
    else:
        assert_rel_close(block(x), theirs)


def test_parity_with_the_original_implementation(tmp_path):
    fixture = load_parity_fixture('davit_parity')
    path = fixture.save_original_checkpoint(tmp_path / 'davit_original.pth.tar')
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    model = timm.create_model(
        fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **fixture.model_kwargs).eval()
    with torch.no_grad():
        out = model(fixture.input)
    assert_rel_close(out, fixture.output)


def test_loads_timm_hub_format(timm_small, tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in timm_small.state_dict().items()}, path)
    model = timm.create_model(
        'zoo_davit_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_rel_close(model(x), timm_small(x))


@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('davit').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(f'zoo_{variant}', shapes, checkpoint_filter_fn)


def test_filter_passes_timm_format_through_and_unwraps(timm_small):
    timm_sd = timm_small.state_dict()
    assert checkpoint_filter_fn(dict(timm_sd), None) == timm_sd
    fixture = load_parity_fixture('davit_parity')
    converted = checkpoint_filter_fn(dict(fixture.state_dict), None)
    for wrapper in ('state_dict', 'model'):
        assert checkpoint_filter_fn({wrapper: dict(fixture.state_dict)}, None) == converted
        assert checkpoint_filter_fn({wrapper: dict(timm_sd)}, None) == timm_sd


@torch.no_grad()
def test_features_only_at_a_detection_size():
    torch.manual_seed(0)
    model = timm.create_model('zoo_davit_tiny', features_only=True, **SMALL).eval()
    x = torch.randn(1, 3, 800, 1216)
    features = model(x)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    for feat, chs, red in zip(features, model.feature_info.channels(), model.feature_info.reduction()):
        assert feat.shape == (1, chs, math.ceil(800 / red), math.ceil(1216 / red))
        assert torch.isfinite(feat).all()


def test_is_timms_class_with_timms_state_dict():
    model = timm.create_model('zoo_davit_tiny', **SMALL)
    assert isinstance(model, DaViT) and isinstance(model, timm.models.davit.DaVit)
    reference = timm.create_model('davit_tiny', **SMALL)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
