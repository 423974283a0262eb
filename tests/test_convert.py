import pytest
import timm
import torch
from safetensors import safe_open

from tests.parity import load_parity_fixture
from zoo import hub
from zoo.convert import ConversionError, convert_checkpoint


@pytest.fixture(scope='module')
def fixture():
    return load_parity_fixture('van_parity')


@pytest.fixture
def original(fixture, tmp_path):
    return fixture.save_original_checkpoint(tmp_path / 'van_original.pth.tar')


def create_from(fixture, path):
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    return timm.create_model(
        fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **fixture.model_kwargs).eval()


@torch.no_grad()
def test_converted_file_reproduces_the_original(fixture, original, tmp_path):
    result = convert_checkpoint(fixture.model_name, original, tmp_path / 'out' / 'van.safetensors',
                                **fixture.model_kwargs)
    assert result.sha256 == hub.file_sha256(result.path)
    assert [p.name for p in result.path.parent.iterdir()] == ['van.safetensors']
    with safe_open(result.path, framework='pt') as f:
        assert f.metadata()['zoo_model'] == fixture.model_name
        assert all(k.startswith(('stem.', 'stages.', 'head.')) for k in f.keys())
        assert len(list(f.keys())) == result.num_tensors == len(fixture.state_dict)
    torch.testing.assert_close(create_from(fixture, result.path)(fixture.input), fixture.output, rtol=0, atol=1e-5)


@torch.no_grad()
def test_mirror_place_is_found_by_the_loader(fixture, original, tmp_path, monkeypatch):
    result = convert_checkpoint('zoo_van_b0.official_in1k', original, mirror=tmp_path, **fixture.model_kwargs)
    # the mirror keeps the original file name; the loader reads the converted content whatever the name
    assert result.path == tmp_path / 'Visual-Attention-Network' / 'VAN-Tiny-original' / 'van_tiny_754.pth.tar'
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(hub, '_SHA256', {})  # the registered sha256 is that of the authors' file, not ours
    model = timm.create_model('zoo_van_b0.official_in1k', pretrained=True,
                              pretrained_cfg_overlay=dict(num_classes=10), **fixture.model_kwargs).eval()
    torch.testing.assert_close(model(fixture.input), fixture.output, rtol=0, atol=1e-5)


def test_unknown_keys_are_named(fixture, tmp_path):
    path = tmp_path / 'bad.pth'
    torch.save(dict(fixture.state_dict, **{'extra.weight': torch.zeros(1)}), path)
    with pytest.raises(ConversionError, match=r'1 unknown keys: extra\.weight'):
        convert_checkpoint(fixture.model_name, path, tmp_path / 'x.safetensors', **fixture.model_kwargs)
    assert not (tmp_path / 'x.safetensors').exists()


def test_wrong_model_reports_missing_and_mis_shaped(fixture, original, tmp_path):
    with pytest.raises(ConversionError, match=r'does not fit zoo_van_b0: .*missing keys: .*another shape'):
        convert_checkpoint('zoo_van_b0', original, tmp_path / 'x.safetensors')


def test_classifier_only_mismatch_suggests_num_classes(fixture, original, tmp_path):
    kwargs = dict(fixture.model_kwargs, num_classes=3)
    with pytest.raises(ConversionError, match=r'head\.fc\.weight \(10, 24\) \(model: \(3, 24\)\).*num_classes'):
        convert_checkpoint(fixture.model_name, original, tmp_path / 'x.safetensors', **kwargs)


def test_unknown_model_and_bad_destination(original, tmp_path):
    with pytest.raises(ConversionError, match="Unknown zoo model 'zoo_nope'"):
        convert_checkpoint('zoo_nope', original, tmp_path / 'x.safetensors')
    with pytest.raises(ValueError, match='exactly one of dst'):
        convert_checkpoint('zoo_van_b0', original)
    with pytest.raises(ConversionError, match='no pretrained weight source'):
        convert_checkpoint('zoo_van_b4', original, mirror=tmp_path)
