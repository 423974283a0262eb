import argparse
import http.server
import logging
import os
import pickle
import sys
import threading
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from zoo import hub
from zoo.hub import CorruptWeightsError, WeightsMismatchError, WeightsNotFoundError, build_model_with_cfg


class TinyNet(nn.Module):
    def __init__(self, num_classes=4, in_chans=3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, 6, 3)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.stem(x).mean((2, 3)))


REGISTERED = dict(hub._SHA256)  # what the zoo's families registered on import

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
    with pytest.raises(WeightsMismatchError, match='keys missing from the file: stem.weight'):
        build(file=str(path))


class WideNet(TinyNet):
    """Another 'variant': more stages and wider layers, so most keys differ or change shape."""

    def __init__(self, num_classes=4, in_chans=3, width=6, depth=1, **kwargs):
        super().__init__(num_classes, in_chans)
        self.stem = nn.Conv2d(in_chans, width, 3)
        self.blocks = nn.Sequential(*[nn.Conv2d(width, width, 1) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)


def test_another_variants_weights_get_a_short_summary(tmp_path):
    """Before, torch's error listed every key on a line of its own (~220 lines for a real variant)."""
    path = tmp_path / 'big.safetensors'
    save_file(WideNet(width=16, depth=40).state_dict(), path)
    with pytest.raises(WeightsMismatchError) as info:
        build_model_with_cfg(WideNet, 'tinynet', True, pretrained_cfg=dict(CFG, file=str(path)), width=8, depth=2)
    message = str(info.value)
    assert message.count('\n') <= 4 and len(message) < 1000, message
    assert f'The weights in {path} do not fit tinynet' in message
    assert '76 keys in the file but not the model: blocks.10.bias, blocks.10.weight, ' in message
    assert '7 keys of another shape: stem.weight ([16, 3, 3, 3] in the file, [8, 3, 3, 3] in the model)' in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(info.value.unexpected) == 76 and not info.value.missing


def test_sha256_verified(tmp_path, source):
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), path)
    hub.register_sha256s({path.as_uri(): hub.file_sha256(path)})
    assert same_weights(build(file=str(path)), source)
    hub.register_sha256s({path.as_uri(): '0' * 64})
    with pytest.raises(CorruptWeightsError, match=r'has sha256 [0-9a-f]{64}, expected 0{64}'):
        build(file=str(path))


def test_sha256_is_keyed_by_location_not_by_how_a_path_is_spelled(tmp_path, source, monkeypatch):
    """A digest belongs to the weights' location (hf-hub id/filename or url). Before, it was looked up by the
    `file=` string, so a digest registered for an absolute path was skipped for the relative spelling."""
    with pytest.raises(ValueError, match="register digests by the weights' location"):
        hub.register_sha256s({str(tmp_path / 'w.pth'): '0' * 64})
    with pytest.raises(ValueError, match="register digests by the weights' location"):
        hub.register_sha256s({'w.pth': '0' * 64})
    # the location of a cfg is its source, whatever local file serves it
    cfg = dict(CFG, file='w.pth', hf_hub_id='someorg/tinynet')
    assert hub.weight_location(cfg) == 'hf-hub:someorg/tinynet/model.safetensors'
    assert hub.weight_location(dict(CFG, file='w.pth', url='https://h/r/tinynet.pth')) == 'https://h/r/tinynet.pth'
    # a file-only cfg is named by its file's uri: every spelling of the path is the same location
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), path)
    monkeypatch.chdir(tmp_path)
    assert hub.weight_location({'file': 'w.safetensors'}) == hub.weight_location({'file': str(path)}) == path.as_uri()
    hub.register_sha256s({path.as_uri(): '0' * 64})
    for spelling in ('w.safetensors', './w.safetensors', str(path), str(tmp_path / '..' / tmp_path.name / path.name)):
        with pytest.raises(CorruptWeightsError, match='expected 0{64}'):
            build(file=spelling)
    # a mirror named by a relative or an absolute ZOO_WEIGHTS_DIR: the location's digest applies to both
    mirrored = tmp_path / 'mirror' / 'someorg' / 'tinynet' / 'model.safetensors'
    mirrored.parent.mkdir(parents=True)
    save_file(source.state_dict(), mirrored)
    hub.register_sha256s({'hf-hub:someorg/tinynet/model.safetensors': '1' * 64})
    for root in ('mirror', str(tmp_path / 'mirror')):
        monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, root)
        with pytest.raises(CorruptWeightsError, match='expected 1{64}'):
            build(hf_hub_id='someorg/tinynet')


def test_callers_own_file_is_not_checked_against_the_released_digest(tmp_path, source):
    """file= names a file of the caller's own (fine-tuned, another format): the source's digest is not its."""
    path = tmp_path / 'model.safetensors'
    save_file(source.state_dict(), path)
    hub.register_sha256s({'hf-hub:someorg/tinynet/model.safetensors': '1' * 64})
    assert same_weights(build(file=str(path), hf_hub_id='someorg/tinynet'), source)


def test_register_sha256_rejects_bad_digest():
    with pytest.raises(ValueError, match='64 hex digits'):
        hub.register_sha256s({'hf-hub:a/b/x.pth': 'abc'})


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


class _Server:
    """A real HTTP server on 127.0.0.1 (a thread the test starts and stops) serving one file; `short` responses
    announce the whole file (Content-Length) but send only half of it and close the connection."""

    def __init__(self, data: bytes, short: int):
        self.data, self.short, self.requests = data, short, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header('Content-Length', str(len(server.data)))
                self.end_headers()
                cut = server.requests <= server.short
                self.wfile.write(server.data[: len(server.data) // 2] if cut else server.data)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_port}/releases/tinynet_v3.pth'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served_bytes(tmp_path, source):
    path = tmp_path / 'served' / 'tinynet_v3.pth'
    path.parent.mkdir()
    torch.save({'model': source.state_dict()}, path)
    return path.read_bytes()


def test_truncated_http_download_is_never_kept(tmp_path, source, served_bytes, monkeypatch):
    """A server that closes early (Content-Length larger than what it sends): before, the short file was renamed
    to its final cache name and reused by every later call."""
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    cache = tmp_path / 'cache'
    size = len(served_bytes)
    with _Server(served_bytes, short=2) as server:
        expected = (rf'Download of {server.url} ended early: received {size // 2} bytes of the {size} announced '
                    rf'\(Content-Length\) \(after 2 attempts; nothing was kept in {cache}\)')
        with pytest.raises(CorruptWeightsError, match=expected):
            build(url=server.url, cache_dir=cache)
        assert server.requests == 2  # tried once more
        assert list(cache.iterdir()) == []  # neither the final name nor a partial file
        # the next call downloads again (nothing short was cached) and the server now sends everything
        assert same_weights(build(url=server.url, cache_dir=cache), source)
        assert server.requests == 3
    assert [p.name for p in cache.iterdir()] == ['tinynet_v3.pth']
    assert (cache / 'tinynet_v3.pth').read_bytes() == served_bytes


def test_one_short_download_is_retried(tmp_path, source, served_bytes, monkeypatch, caplog):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    with _Server(served_bytes, short=1) as server:
        hub.register_sha256s({server.url: hub.hashlib.sha256(served_bytes).hexdigest()})
        with caplog.at_level(logging.WARNING, logger='zoo.hub'):
            assert same_weights(build(url=server.url, cache_dir=tmp_path / 'cache'), source)
        assert server.requests == 2
    assert 'ended early' in caplog.text and 'downloading again' in caplog.text
    assert [p.name for p in (tmp_path / 'cache').iterdir()] == ['tinynet_v3.pth']


def test_url_weights_are_found_where_torch_hub_keeps_them(tmp_path, monkeypatch, source):
    """Files torch.hub / timm downloaded (torch.hub.get_dir()/checkpoints/<basename>) load offline. Before, the hub
    looked in <hub dir>/checkpoints/checkpoints/."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    assert hub.url_cache_dir() == Path(torch.hub.get_dir()) / 'checkpoints' == checkpoints
    cached = checkpoints / 'tinynet_v1.pth'
    cached.parent.mkdir(parents=True)
    torch.save({'state_dict': source.state_dict()}, cached)
    assert same_weights(build(url='https://example.invalid/releases/tinynet_v1.pth'), source)


def test_url_unreachable(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r'Could not download .*\(after 2 attempts'):
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




def test_every_registered_release_can_be_served_converted_from_a_mirror(tmp_path, monkeypatch, source):
    """`convert --mirror` places, for every tag whose release has a digest: the converted file beside the original's
    place, identified by its manifest, is what the hub serves offline (and a conversion of a wrong original is not)."""
    tags = [t for t in timm.list_models('zoo_*', pretrained=True)
            if REGISTERED.get(hub.weight_location(get_pretrained_cfg(t).to_dict()))]
    assert tags
    registered = dict(REGISTERED)
    monkeypatch.setattr(hub, '_SHA256', registered)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    for tag in tags:
        cfg = get_pretrained_cfg(tag).to_dict()
        location = hub.weight_location(cfg)
        converted = hub.converted_path(hub.mirror_path(cfg))
        converted.parent.mkdir(parents=True, exist_ok=True)
        save_file(source.state_dict(), converted)
        hub.write_manifest(converted, location, 'x', registered[location], model=tag)
        assert hub.resolve_weights(cfg) == converted, tag
        hub.write_manifest(converted, location, 'x', '0' * 64, model=tag)
        with pytest.raises(CorruptWeightsError, match='is not a conversion of the released file'):
            hub.resolve_weights(cfg)
