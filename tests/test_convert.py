import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from tests.parity import load_parity_fixture
from zoo import hub
from zoo.convert import ConversionError, convert_checkpoint
from zoo.hub import CorruptWeightsError


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


VAN_B0 = 'hf-hub:Visual-Attention-Network/VAN-Tiny-original/van_tiny_754.pth.tar'


@pytest.fixture
def released(original, monkeypatch):
    """The fixture checkpoint stands in for the authors' file: its digest is the published one."""
    monkeypatch.setitem(hub._SHA256, VAN_B0, hub.file_sha256(original))
    return original


@torch.no_grad()
def test_mirror_conversion_of_a_registered_file_loads_offline(fixture, released, tmp_path, monkeypatch):
    """`convert --mirror` + pretrained=True offline, for weights whose original file has a registered sha256. Before,
    the converted file took the original's name and was checked against the original's digest, which conversion
    always changes ("delete it and download again")."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    original = released
    result = convert_checkpoint('zoo_van_b0.official_in1k', original, mirror=tmp_path, **fixture.model_kwargs)
    folder = tmp_path / 'Visual-Attention-Network' / 'VAN-Tiny-original'
    assert result.path == folder / 'van_tiny_754.pth.tar.zoo.safetensors'  # a name of its own
    assert result.manifest == folder / 'van_tiny_754.pth.tar.zoo.json'
    assert sorted(p.name for p in folder.iterdir()) == [result.manifest.name, result.path.name]
    manifest = json.loads(result.manifest.read_text())
    assert manifest['source'] == {'location': VAN_B0, 'name': original.name, 'sha256': hub.file_sha256(original)}
    assert manifest['converted']['sha256'] == result.sha256 == hub.file_sha256(result.path)

    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    model = timm.create_model('zoo_van_b0.official_in1k', pretrained=True,
                              pretrained_cfg_overlay=dict(num_classes=10), **fixture.model_kwargs).eval()
    torch.testing.assert_close(model(fixture.input), fixture.output, rtol=0, atol=1e-5)

    # the converted file is checked against its manifest: a flipped byte is refused
    data = bytearray(result.path.read_bytes())
    data[-100] ^= 0xFF
    result.path.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError, match=r'van_tiny_754.pth.tar.zoo.safetensors has sha256 .* manifest'):
        timm.create_model('zoo_van_b0.official_in1k', pretrained=True, **fixture.model_kwargs)


def test_mirror_refuses_a_wrong_original(fixture, original, tmp_path, monkeypatch):
    monkeypatch.setitem(hub._SHA256, VAN_B0, '1' * 64)
    with pytest.raises(ConversionError, match=r'is not the released file of zoo_van_b0.official_in1k .*1{64}'):
        convert_checkpoint('zoo_van_b0.official_in1k', original, mirror=tmp_path, **fixture.model_kwargs)
    assert list(tmp_path.iterdir()) == [original]
    # a conversion whose manifest names another source digest (converted while none was registered) is refused too
    monkeypatch.delitem(hub._SHA256, VAN_B0)
    convert_checkpoint('zoo_van_b0.official_in1k', original, mirror=tmp_path / 'm', **fixture.model_kwargs)
    monkeypatch.setitem(hub._SHA256, VAN_B0, '1' * 64)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / 'm'))
    with pytest.raises(CorruptWeightsError, match='is not a conversion of the released file'):
        timm.create_model('zoo_van_b0.official_in1k', pretrained=True, **fixture.model_kwargs)


def test_converted_file_without_its_manifest_is_refused(fixture, released, tmp_path, monkeypatch):
    result = convert_checkpoint('zoo_van_b0.official_in1k', released, mirror=tmp_path, **fixture.model_kwargs)
    result.manifest.unlink()
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(CorruptWeightsError, match='has no manifest van_tiny_754.pth.tar.zoo.json'):
        timm.create_model('zoo_van_b0.official_in1k', pretrained=True, **fixture.model_kwargs)


def test_old_conversion_under_the_original_name_gets_a_useful_error(fixture, original, tmp_path, monkeypatch):
    """What an older convert.py left in a mirror: converted content under the original's name."""
    result = convert_checkpoint(fixture.model_name, original, tmp_path / 'x.safetensors', **fixture.model_kwargs)
    place = tmp_path / 'mirror' / 'Visual-Attention-Network' / 'VAN-Tiny-original' / 'van_tiny_754.pth.tar'
    place.parent.mkdir(parents=True)
    result.path.rename(place)
    monkeypatch.setitem(hub._SHA256, VAN_B0, '1' * 64)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / 'mirror'))
    with pytest.raises(CorruptWeightsError, match='converted by the zoo, kept under the original.s name .* --mirror'):
        timm.create_model('zoo_van_b0.official_in1k', pretrained=True, **fixture.model_kwargs)


@pytest.mark.parametrize('umask', [0o022, 0o002])
def test_written_files_respect_the_umask(fixture, original, released, tmp_path, umask):
    """A shared mirror needs readable files; before, they were written 0600 whatever the umask."""
    old = os.umask(umask)
    try:
        single = convert_checkpoint(fixture.model_name, original, tmp_path / 'van.safetensors', **fixture.model_kwargs)
        mirrored = convert_checkpoint('zoo_van_b0.official_in1k', original, mirror=tmp_path / 'mirror',
                                      **fixture.model_kwargs)
    finally:
        os.umask(old)
    for path in (single.path, mirrored.path, mirrored.manifest):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_destination_that_is_a_directory(fixture, original, tmp_path):
    with pytest.raises(ConversionError, match=rf'{tmp_path} is a directory; give the file to write'):
        convert_checkpoint(fixture.model_name, original, tmp_path, **fixture.model_kwargs)


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


# --- the command line: tools/convert.py --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'convert.py'), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_converts_and_prints_sha256(tmp_path):
    fixture = load_parity_fixture('van_parity')
    original = fixture.save_original_checkpoint(tmp_path / 'van.pth.tar')
    out = tmp_path / 'van.safetensors'
    proc = run(fixture.model_name, original, '-o', out, '--model-kwargs', json.dumps(fixture.model_kwargs))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:3] == [str(out), 'sha256', hub.file_sha256(out)]


def test_cli_refusal_is_one_line(tmp_path):
    missing = tmp_path / 'absent.pth'
    proc = run('zoo_van_b0', missing, '-o', tmp_path / 'x.safetensors')
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0 and 'absent.pth does not exist' in proc.stderr


def test_cli_output_that_is_a_directory_is_one_line(tmp_path):
    """Before: a traceback (IsADirectoryError from the final rename)."""
    fixture = load_parity_fixture('van_parity')
    original = fixture.save_original_checkpoint(tmp_path / 'van.pth.tar')
    proc = run(fixture.model_name, original, '-o', tmp_path, '--model-kwargs', json.dumps(fixture.model_kwargs))
    assert proc.returncode == 2
    assert proc.stderr == (f'error: -o/--output: {tmp_path} is a directory; give the file to write '
                           f'(e.g. {tmp_path / "weights.safetensors"}), or --mirror {tmp_path} for a mirror\n')
    assert [p.name for p in tmp_path.iterdir()] == ['van.pth.tar']
