import argparse
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from zoo import hub
from zoo.hub import CorruptWeightsError, WeightsNotFoundError, build_model_with_cfg


class TinyNet(nn.Module):
    def __init__(self, num_classes=4, in_chans=3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, 6, 3)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.stem(x).mean((2, 3)))


CFG = dict(num_classes=4, first_conv='stem', classifier='head', architecture='tinynet', tag='test')


def build(pretrained=True, cache_dir=None, **overlay):
    cfg = dict(CFG, **overlay)
    return build_model_with_cfg(TinyNet, 'tinynet', pretrained, pretrained_cfg=cfg, cache_dir=cache_dir)


@pytest.fixture
def source():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch):
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(hub, '_SHA256', {})


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_file(tmp_path, source):
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), path)
    model = build(file=str(path))
    assert same_weights(model, source)
    assert 'state_dict' not in model.pretrained_cfg


@pytest.mark.parametrize('wrapper', ['', 'state_dict', 'model', 'state_dict_ema'])
def test_torch_file_nested_with_training_args(tmp_path, source, wrapper):
    path = tmp_path / 'w.pth'
    sd = {f'module.{k}': v for k, v in source.state_dict().items()}  # DDP prefix, stripped on load
    checkpoint = {wrapper: sd, 'args': argparse.Namespace(lr=0.1), 'epoch': 3} if wrapper else sd
    torch.save(checkpoint, path)
    assert same_weights(build(file=str(path)), source)


def test_torch_file_with_a_pickled_yacs_config(tmp_path, source, monkeypatch):
    """Swin-style training scripts (LITv2's release files) save their yacs CfgNode beside the weights; it loads
    as a plain dict, with or without yacs installed, and without running its code."""
    yacs, yacs_config = types.ModuleType('yacs'), types.ModuleType('yacs.config')

    class CfgNode(dict):  # pickles like yacs' own: a dict subclass with attributes in __dict__
        def __init__(self, entries):
            super().__init__(entries)
            self.__dict__['__immutable__'] = True

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    yacs_config.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, 'yacs', yacs)
    monkeypatch.setitem(sys.modules, 'yacs.config', yacs_config)
    path = tmp_path / 'litv2_s.pth'
    config = CfgNode({'AMP_OPT_LEVEL': 'O1', 'MODEL': CfgNode({'TYPE': 'litv2', 'DROP_PATH_RATE': 0.2})})
    torch.save({'model': source.state_dict(), 'config': config, 'max_accuracy': 82.0, 'epoch': 299,
                'amp': {'loss_scaler0': {'loss_scale': 65536.0, 'unskipped': 10}}}, path)
    monkeypatch.delitem(sys.modules, 'yacs.config')
    monkeypatch.delitem(sys.modules, 'yacs')
    assert same_weights(build(file=str(path)), source)


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch ' + str(_Payload.marker),))


def test_pickled_code_is_never_run(tmp_path, source):
    _Payload.marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'state_dict': source.state_dict(), 'x': _Payload()}, f)
    with pytest.raises(CorruptWeightsError, match='evil.pth'):
        build(file=str(path))
    assert not _Payload.marker.exists()


def test_missing_file_names_it(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r'nope\.pth given for tinynet\.test does not exist'):
        build(file=str(tmp_path / 'nope.pth'))


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_file_gets_clear_error(tmp_path, source, suffix):
    path = tmp_path / f'w{suffix}'
    if suffix == '.pth':
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expected = rf'Could not read weights file .*w\{suffix} \({len(data) // 2} bytes\)'
    with pytest.raises(CorruptWeightsError, match=expected):
        build(file=str(path))


def test_file_without_state_dict(tmp_path):
    path = tmp_path / 'w.pth'
    torch.save({'epoch': 1, 'weights': [1, 2]}, path)
    with pytest.raises(CorruptWeightsError, match='holds no state dict'):
        build(file=str(path))


def test_wrong_keys_fail_strict_load(tmp_path, source):
    path = tmp_path / 'w.safetensors'
    save_file({'other.' + k: v for k, v in source.state_dict().items()}, path)
    with pytest.raises(RuntimeError, match='Missing key'):
        build(file=str(path))


def test_sha256_verified(tmp_path, source):
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), path)
    hub.register_sha256s({str(path): hub.file_sha256(path)})
    assert same_weights(build(file=str(path)), source)
    hub.register_sha256s({str(path): '0' * 64})
    with pytest.raises(CorruptWeightsError, match=r'has sha256 [0-9a-f]{64}, expected 0{64}'):
        build(file=str(path))


def test_register_sha256_rejects_bad_digest():
    with pytest.raises(ValueError, match='64 hex digits'):
        hub.register_sha256s({'x': 'abc'})


def test_new_num_classes_keeps_backbone_and_drops_head(tmp_path, source):
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), path)
    model = build_model_with_cfg(
        TinyNet, 'tinynet', True, pretrained_cfg=dict(CFG, file=str(path)), num_classes=7)
    assert torch.equal(model.stem.weight, source.stem.weight)
    assert model.head.weight.shape == (7, 6)


def test_no_weights_at_all():
    with pytest.raises(WeightsNotFoundError, match='tinynet.test has no pretrained weights'):
        build()


def test_mirror_serves_hf_and_url_weights(tmp_path, monkeypatch, source):
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / 'mirror'))
    hf_file = tmp_path / 'mirror' / 'someorg' / 'tinynet-weights' / 'model.safetensors'
    hf_file.parent.mkdir(parents=True)
    save_file(source.state_dict(), hf_file)
    assert same_weights(build(hf_hub_id='someorg/tinynet-weights'), source)

    url_file = tmp_path / 'mirror' / 'tinynet_v1.pth'
    torch.save({'state_dict': source.state_dict()}, url_file)
    assert same_weights(build(url='https://example.invalid/releases/tinynet_v1.pth'), source)


def test_mirror_file_is_verified_too(tmp_path, monkeypatch, source):
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    path = tmp_path / 'tinynet_v1.pth'
    torch.save(source.state_dict(), path)
    url = 'https://example.invalid/releases/tinynet_v1.pth'
    hub.register_sha256s({url: 'f' * 64})
    with pytest.raises(CorruptWeightsError, match=str(path)):
        build(url=url)


def test_offline_hf_miss_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(WeightsNotFoundError, match=r'someorg/absent/model.safetensors.*ZOO_WEIGHTS_DIR'):
        build(hf_hub_id='someorg/absent', cache_dir=tmp_path)


def test_hf_cache_is_used_offline(tmp_path, monkeypatch, source):
    # The layout huggingface_hub's cache has after a download of someorg/tinynet:model.safetensors.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    repo = tmp_path / 'models--someorg--tinynet'
    revision = 'a' * 40
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(revision)
    snapshot = repo / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    save_file(source.state_dict(), snapshot / 'model.safetensors')
    assert same_weights(build(hf_hub_id='someorg/tinynet', cache_dir=tmp_path), source)


def test_url_download_is_atomic_and_verified(tmp_path, source):
    served = tmp_path / 'served' / 'tinynet_v2.pth'
    served.parent.mkdir()
    torch.save({'model': source.state_dict()}, served)
    url = served.as_uri()
    cache = tmp_path / 'cache'

    hub.register_sha256s({url: '1' * 64})
    with pytest.raises(CorruptWeightsError, match='expected 1{64}'):
        build(url=url, cache_dir=cache)
    assert list(cache.iterdir()) == []  # neither the final name nor a partial file is left behind

    hub.register_sha256s({url: hub.file_sha256(served)})
    assert same_weights(build(url=url, cache_dir=cache), source)
    assert [p.name for p in cache.iterdir()] == ['tinynet_v2.pth']
    served.unlink()  # the second build is served from the cache
    assert same_weights(build(url=url, cache_dir=cache), source)


def test_url_unreachable(tmp_path):
    with pytest.raises(WeightsNotFoundError, match='Could not download'):
        build(url=(tmp_path / 'absent.pth').as_uri(), cache_dir=tmp_path / 'cache')
    assert list((tmp_path / 'cache').iterdir()) == []


def test_url_offline_refuses_network(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(WeightsNotFoundError, match='downloads are off'):
        build(url='https://example.invalid/x.pth', cache_dir=tmp_path)


def test_mirror_path_layout(tmp_path):
    assert hub.mirror_path({'hf_hub_id': 'a/b'}, root=tmp_path) == tmp_path / 'a' / 'b' / 'model.safetensors'
    assert hub.mirror_path({'hf_hub_id': 'a/b', 'hf_hub_filename': 'x.pth.tar'}, root=tmp_path) == Path(
        tmp_path, 'a', 'b', 'x.pth.tar')
    assert hub.mirror_path({'url': 'https://h/r/download/v1/m.pth?x=1'}, root=tmp_path) == tmp_path / 'm.pth'
    assert hub.mirror_path({'url': 'https://h/m.pth'}) is None
