import json
import math

import pytest
import timm
import torch
from safetensors.torch import save_file

import zoo  # noqa: F401  (registers the zoo models)
from tests.parity import FIXTURES, load_parity_fixture
from zoo.models.mambaout import checkpoint_filter_fn

VARIANTS = ('femto', 'kobe', 'tiny', 'small', 'base')


def test_parity_with_original_implementation(tmp_path):
    fixture = load_parity_fixture('mambaout_parity')
    path = fixture.save_original_checkpoint(tmp_path / 'mambaout.pth')
    # The cfg says 1000 classes; timm's loader drops a classifier whose class count differs from the cfg's,
    # so the overlay states the fixture's head size and the load stays strict.
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    model = timm.create_model(
        fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **fixture.model_kwargs).eval()
    with torch.no_grad():
        output = model(fixture.input)
    torch.testing.assert_close(output, fixture.output, atol=1e-5, rtol=1e-5)


def test_loads_timm_hub_format(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model('mambaout_femto').eval()
    with torch.no_grad():  # move every tensor off its init value, so each one must be loaded to match
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / 'model.safetensors'
    save_file(reference.state_dict(), path)
    model = timm.create_model('zoo_mambaout_femto', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize('variant', VARIANTS)
def test_original_keys_map_exactly(variant):
    shapes = json.loads((FIXTURES / 'mambaout_original_keys.json').read_text())[f'mambaout_{variant}']
    with torch.device('meta'):
        model = timm.create_model(f'zoo_mambaout_{variant}')
        original = {k: torch.empty(shape) for k, shape in shapes.items()}
    mapped = checkpoint_filter_fn(original, model)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 2)])
def test_features_only_is_nchw_forward_intermediates(out_indices):
    model = timm.create_model('zoo_mambaout_femto').eval()
    features = timm.create_model('zoo_mambaout_femto', features_only=True, out_indices=out_indices).eval()
    missing, _ = features.model.load_state_dict(model.state_dict(), strict=False)  # the head is gone there
    assert not missing
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        maps = features(x)
        expected = model.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
    assert features.feature_info.reduction() == [(4, 8, 16, 32)[i] for i in out_indices]
    assert len(maps) == len(out_indices)
    for fmap, ref, chs, red in zip(maps, expected, features.feature_info.channels(), features.feature_info.reduction()):
        assert fmap.shape == (1, chs, math.ceil(97 / red), math.ceil(131 / red))
        assert torch.equal(fmap, ref)
