"""Vim: parity with the original implementation, the scan against the reference backend, and the original checkpoints.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is Vim's own.
Fixtures (made by running hustvl/Vim's vim/models_mamba.py on the CPU with its pure-PyTorch references in place of the
CUDA calls, see their `source`):
  vim_parity.safetensors          a 4-block Vim (patch 16, stride 16, width 32, 80x48 input: 5x3 patches, the class
                                  token at index 7) with perturbed weights: input, logits, each block's mixer output
                                  (``mixer_out.N``, class token included), the gradients of (logits * loss_weight).sum()
                                  (``grad.input``, ``grad.<parameter>``) and the original state dict;
  vim_stride8_parity.safetensors  the same for a 3-block stride-8 model (d_state 8, 48x40 input: 5x4 patches);
  vim_original_keys.json.gz       the original state dict's key -> shape for every registered variant.
"""
import argparse
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

import kernels
from tests.parity import (
    FIXTURES,
    assert_original_keys_map_exactly,
    assert_rel_close,
    load_parity_fixture,
    original_key_shapes,
    perturbed,
)
from zoo.hub import expected_sha256, weight_location
from zoo.models.vim import BiMambaMixer, checkpoint_filter_fn

FIXTURE_NAMES = ('vim_parity', 'vim_stride8_parity')


@pytest.fixture(scope='module', params=FIXTURE_NAMES)
def fixture(request):
    fx = load_parity_fixture(request.param)
    with safe_open(FIXTURES / f'{request.param}.safetensors', framework='pt') as f:
        fx.extra = {k: f.get_tensor(k) for k in f.keys() if k.startswith(('mixer_out.', 'grad.', 'loss_weight'))}
    return fx


@pytest.fixture(scope='module')
def small():
    """The stride-16 fixture's architecture with perturbed weights (the original's numbers are not needed)."""
    fx = load_parity_fixture('vim_parity')
    torch.manual_seed(0)
    return perturbed(timm.create_model(fx.model_name, **fx.model_kwargs), seed=3)


def create_from(fixture, path, **kwargs):
    """The fixture's model with an original-format file as its pretrained weights."""
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    return timm.create_model(
        fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **dict(fixture.model_kwargs, **kwargs))


def drop_class_token(tokens: torch.Tensor) -> torch.Tensor:
    mid = (tokens.shape[1] - 1) // 2
    return torch.cat((tokens[:, :mid], tokens[:, mid + 1:]), dim=1)


@torch.no_grad()
def test_parity_with_original_checkpoint(fixture, tmp_path):
    model = create_from(fixture, fixture.save_original_checkpoint(tmp_path / 'vim.pth')).eval()
    assert_rel_close(model(fixture.input), fixture.output)


def test_gradients_match_original(fixture, tmp_path):
    model = create_from(fixture, fixture.save_original_checkpoint(tmp_path / 'vim.pth')).eval()
    x = fixture.input.clone().requires_grad_()
    (model(x) * fixture.extra['loss_weight']).sum().backward()
    assert_rel_close(x.grad, fixture.extra['grad.input'], msg='input')
    for name, p in model.named_parameters():
        assert_rel_close(p.grad, fixture.extra[f'grad.{name}'], msg=name)


@torch.no_grad()
def test_features_are_the_seg_backbones_mixer_outputs(fixture, tmp_path):
    """features_only gives what hustvl/Vim's seg backbone (use_residual_as_feature=False) taps: each block's mixer
    output, patch tokens as NCHW; out_indices default to the end of every quarter of the depth."""
    path = fixture.save_original_checkpoint(tmp_path / 'vim.pth')
    backbone = create_from(fixture, path, features_only=True).eval()
    model = create_from(fixture, path).eval()
    depth = len(model.layers)
    rows, cols = model.patch_embed.dynamic_feat_size(tuple(fixture.input.shape[-2:]))
    assert list(backbone.feature_info.out_indices) == list(range(min(depth, 4)))
    features = backbone(fixture.input)
    for i, feat in zip(backbone.feature_info.out_indices, features):
        expected = drop_class_token(fixture.extra[f'mixer_out.{i}'])
        assert feat.shape == (2, model.embed_dim, rows, cols)
        assert_rel_close(feat.flatten(2).transpose(1, 2), expected, msg=f'block {i}')
    # norm=True: the normalised stream after the block; after the last block that is forward_features' patch tokens
    last = model.forward_intermediates(fixture.input, indices=1, norm=True, output_fmt='NLC', intermediates_only=True)
    torch.testing.assert_close(last[0], drop_class_token(model.forward_features(fixture.input)))
    feat, cls = model.forward_intermediates(fixture.input, indices=[0], return_prefix_tokens=True,
                                            intermediates_only=True)[0]
    torch.testing.assert_close(cls, fixture.extra['mixer_out.0'][:, (fixture.extra['mixer_out.0'].shape[1] - 1) // 2])


def test_authors_default_out_indices():
    with torch.device('meta'):
        backbone = timm.create_model('zoo_vim_small', features_only=True)
    assert list(backbone.feature_info.out_indices) == [5, 11, 17, 23]
    assert backbone.feature_info.reduction() == [16] * 4


@torch.no_grad()
def test_head_reads_the_middle_class_token(small):
    x = torch.randn(1, 3, 80, 48)
    tokens = small.forward_features(x)
    assert tokens.shape == (1, 16, 32)  # 15 patches and the class token at index 7
    torch.testing.assert_close(small.forward_head(tokens, pre_logits=True), tokens[:, 7])


def test_original_training_checkpoint_loads_model_not_ema(fixture, tmp_path):
    """The hosted files are DeiT-style training pickles; the authors evaluate 'model', not 'model_ema'."""
    ema = {k: v + 0.05 * torch.randn_like(v) for k, v in fixture.state_dict.items()}
    path = tmp_path / 'vim_t_midclstok_like.pth'
    torch.save(dict(
        model=fixture.state_dict, model_ema=ema,
        optimizer=dict(state={}, param_groups=[dict(lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05, params=[0])]),
        lr_scheduler=dict(decay_t=300, t_in_epochs=True), epoch=299, scaler=dict(scale=65536.0, _growth_tracker=0),
        args=argparse.Namespace(model='vim_tiny_patch16_224_bimambav2', drop_path=0.05, model_ema=True),
    ), path)
    with torch.no_grad():
        assert_rel_close(create_from(fixture, path).eval()(fixture.input), fixture.output)


def test_filter_unwraps_and_prefers_model():
    sd = {'cls_token': torch.zeros(1, 1, 4), 'pos_embed': torch.zeros(1, 5, 4)}
    ema = {'cls_token': torch.ones(1, 1, 4), 'pos_embed': torch.ones(1, 5, 4)}
    with torch.device('meta'):
        model = timm.create_model('zoo_vim_tiny', img_size=32, patch_size=16, embed_dim=4, depth=1)
    for checkpoint in (sd, {'model': sd}, {'model_ema': ema, 'model': sd}, {'state_dict': sd},
                       {f'module.{k}': v for k, v in sd.items()}):
        out = checkpoint_filter_fn(dict(checkpoint), model)
        assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)


@torch.no_grad()
def test_position_embedding_resampled_in_filter_and_at_runtime():
    """A checkpoint loaded into a model built for another size gets the table the runtime resampling uses; the class
    token keeps its own position, in the middle of the new sequence."""
    kwargs = dict(embed_dim=16, depth=2, num_classes=3)
    torch.manual_seed(0)
    trained = perturbed(timm.create_model('zoo_vim_tiny', img_size=48, **kwargs), seed=4)  # 3x3 patches
    other = timm.create_model('zoo_vim_tiny', img_size=(80, 64), **kwargs).eval()          # 5x4 patches
    other.load_state_dict(checkpoint_filter_fn(dict(trained.state_dict()), other))
    assert other.pos_embed.shape == (1, 21, 16)
    torch.testing.assert_close(other.pos_embed[:, 10], trained.pos_embed[:, 4])
    x = torch.randn(1, 3, 80, 64)
    torch.testing.assert_close(other(x), trained(x))


@torch.no_grad()
def test_any_size_pads_to_the_patch_grid(small):
    """An image is zero-padded (bottom, right) to the next multiple of the patch: the same as padding it oneself."""
    small.eval()
    x = torch.randn(2, 3, 70, 45)
    padded = F.pad(x, (0, 48 - 45, 0, 80 - 70))
    torch.testing.assert_close(small(x), small(padded))
    for size in ((97, 131), (16, 16), (15, 33), (1, 1)):
        feats = small.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
        assert feats[-1].shape[-2:] == tuple(math.ceil(s / 16) for s in size)
    with torch.device('meta'):
        stride8 = timm.create_model('zoo_vim_tiny_stride8')
    # overlapping 16x16 patches every 8 pixels: (H - 16) / 8 + 1 after padding
    assert stride8.patch_embed.dynamic_feat_size((224, 224)) == (27, 27)
    assert stride8.patch_embed.dynamic_feat_size((97, 131)) == (12, 16)
    assert stride8.patch_embed.dynamic_feat_size((8, 8)) == (1, 1)


def _small_kwargs():
    return load_parity_fixture('vim_parity').model_kwargs


def _train_step(model, x, autocast_dtype=None):
    model.zero_grad()
    with torch.autocast('cpu', dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model(x)
    loss = out.float().square().mean()
    loss.backward()
    return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_scan_equals_reference_backend_with_gradients(small):
    small.train()
    x = torch.randn(2, 3, 64, 48)
    out, grads = _train_step(small, x)
    with kernels.use_backend('reference'):
        ref_out, ref_grads = _train_step(small, x)
    assert_rel_close(out, ref_out)
    for name in grads:
        assert_rel_close(grads[name], ref_grads[name], msg=name)


def test_channel_slices_equal_one_slice(small, monkeypatch):
    """Long sequences run the mixer in channel slices; outputs and gradients are those of the one-slice path."""
    x = torch.randn(1, 3, 80, 64)
    out, grads = _train_step(small, x)
    monkeypatch.setattr(BiMambaMixer, 'chunk_elements', 100)  # 21 tokens x 64 channels: 14 slices
    sliced_out, sliced_grads = _train_step(small, x)
    assert_rel_close(sliced_out, out)
    for name in grads:
        assert_rel_close(sliced_grads[name], grads[name], msg=name)


def test_bf16_autocast_trains_a_step_without_nan(small):
    """The original reports NaN under AMP; here the residual stream and the scan's state stay in float32."""
    model = timm.create_model('zoo_vim_tiny', **_small_kwargs())
    model.load_state_dict(small.state_dict())
    model.train()
    x = torch.randn(2, 3, 80, 48)
    reference, _ = _train_step(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out, grads = _train_step(model, x, torch.bfloat16)
    assert all(torch.isfinite(g).all() for g in grads.values())
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_rel_close(out, reference, rel=0.1)


def test_no_weight_decay_names_the_originals_exemptions(small):
    names = small.no_weight_decay()
    assert {'pos_embed', 'cls_token', 'layers.0.mixer.A_log', 'layers.3.mixer.A_b_log', 'layers.1.mixer.D',
            'layers.2.mixer.D_b'} <= names
    params = dict(small.named_parameters())
    assert names <= params.keys()
    assert len(names) == 2 + 4 * len(small.layers)


def test_errors_name_the_constraint(small):
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        small(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="'token', 'avg' or ''"):
        small.reset_classifier(10, 'max')
    with pytest.raises(ValueError, match='NCHW'):
        small.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt='NHWC')
    with pytest.raises(ValueError, match='stride'):
        timm.create_model('zoo_vim_tiny', stride=32, depth=1, embed_dim=8)


def test_published_digests_are_registered_for_their_files():
    for tag in ('zoo_vim_tiny.hustvl_in1k', 'zoo_vim_tiny_stride8.hustvl_in1k', 'zoo_vim_small.hustvl_in1k'):
        cfg = timm.models.get_pretrained_cfg(tag).to_dict()
        assert expected_sha256(weight_location(cfg)) is not None, tag


@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('vim').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(variant, shapes, checkpoint_filter_fn)
