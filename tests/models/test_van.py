"""VAN: parity with the original implementation and loading of the original checkpoints.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is VAN's own.
Fixtures (made by running Visual-Attention-Network/VAN-Classification's models/van.py, see their `source`):
  van_parity.safetensors      a small VAN with trained-looking random weights: input, logits, the four stage
                              features (``features.N``, the output of the original ``norm{N+1}`` as NCHW) and the
                              original state dict;
  van_original_keys.json.gz   the original state dict's key -> shape for van_b0 .. van_b6.
"""
import argparse

import pytest
import timm
import torch
from safetensors import safe_open

from tests.parity import FIXTURES, assert_original_keys_map_exactly, load_parity_fixture, original_key_shapes
from zoo.models.van import checkpoint_filter_fn

ATOL = 1e-5


@pytest.fixture(scope='module')
def fixture():
    return load_parity_fixture('van_parity')


@pytest.fixture(scope='module')
def original_features():
    with safe_open(FIXTURES / 'van_parity.safetensors', framework='pt') as f:
        return [f.get_tensor(f'features.{i}') for i in range(4)]


@pytest.fixture
def original_file(fixture, tmp_path):
    return fixture.save_original_checkpoint(tmp_path / 'van_original.pth.tar')


def create_from(fixture, path, **kwargs):
    """The fixture's model with the original-format file as its pretrained weights."""
    kwargs = dict(fixture.model_kwargs, **kwargs)
    # the file's classifier has the fixture's class count; saying so keeps timm from dropping it as a mismatch
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    return timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


@torch.no_grad()
def test_parity_with_original_checkpoint(fixture, original_file):
    model = create_from(fixture, original_file)
    torch.testing.assert_close(model(fixture.input), fixture.output, rtol=0, atol=ATOL)


@torch.no_grad()
def test_features_are_the_original_stage_norm_outputs(fixture, original_file, original_features):
    model = create_from(fixture, original_file, features_only=True)
    features = model(fixture.input)
    assert len(features) == 4
    for feat, expected in zip(features, original_features):
        torch.testing.assert_close(feat, expected, rtol=0, atol=ATOL)
    subset = create_from(fixture, original_file, features_only=True, out_indices=(1, 3))
    for feat, expected in zip(subset(fixture.input), original_features[1::2]):
        torch.testing.assert_close(feat, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize('num_classes', [5, 0])
@torch.no_grad()
def test_new_class_count_drops_only_the_head(fixture, original_file, original_features, num_classes):
    full = create_from(fixture, original_file)
    model = create_from(fixture, original_file, num_classes=num_classes)
    out = model(fixture.input)
    assert out.shape == (1, num_classes or model.num_features)
    torch.testing.assert_close(model.forward_features(fixture.input), original_features[-1], rtol=0, atol=ATOL)
    if num_classes:
        assert model.get_classifier().weight.shape == (num_classes, model.num_features)
    else:
        torch.testing.assert_close(out, full.forward_head(full.forward_features(fixture.input), pre_logits=True))


@torch.no_grad()
def test_in_chans_1_sums_the_original_stem(fixture, original_file):
    model = create_from(fixture, original_file)
    gray = create_from(fixture, original_file, in_chans=1)
    x = fixture.input[:, :1]
    torch.testing.assert_close(gray(x), model(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=ATOL)


@torch.no_grad()
def test_loads_the_original_training_checkpoint_layout(fixture, tmp_path):
    """The hosted files are timm 0.4.12 training checkpoints: the weights under `state_dict` beside the optimizer
    state and the run's argparse.Namespace."""
    path = tmp_path / 'van_b0_like.pth.tar'
    torch.save(dict(
        epoch=299, arch='van_b0', version=2, metric=75.4, state_dict=fixture.state_dict,
        optimizer=dict(state={}, param_groups=[dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05, params=[0])]),
        args=argparse.Namespace(model='van_b0', drop_path=0.1),
    ), path)
    model = create_from(fixture, path)
    torch.testing.assert_close(model(fixture.input), fixture.output, rtol=0, atol=ATOL)


def test_filter_passes_our_format_through_and_unwraps(fixture):
    converted = checkpoint_filter_fn(dict(fixture.state_dict), None)
    assert checkpoint_filter_fn(dict(converted), None) == converted
    for wrapper in ('state_dict', 'model'):
        assert checkpoint_filter_fn({wrapper: dict(fixture.state_dict)}, None).keys() == converted.keys()
        assert checkpoint_filter_fn({wrapper: dict(converted)}, None) == converted


@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('van').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(f'zoo_{variant}', shapes, checkpoint_filter_fn)
