"""zoo.benchmark.specs: shapes, devices and dtypes, input specs, kernel cases and family configs."""
import pytest
import torch

from zoo.benchmark import specs
from zoo.benchmark.specs import BenchmarkError

from .toys import SDPA


@pytest.mark.parametrize('call, message', [
    (lambda: specs.check_device_dtype('cpu', 'fp16'), 'allowed on cpu: fp32, bf16'),
    (lambda: specs.check_device_dtype('cpu', 'fp64'), "unknown dtype 'fp64'; allowed: fp32, bf16, fp16"),
    (lambda: specs.check_device_dtype('tpu', 'fp32'), "bad device 'tpu'"),
    (lambda: specs.check_mode('eval'), "unknown mode 'eval'; allowed: inference, train"),
    (lambda: specs.parse_shape('q=2,x,3'), "bad shape 'q=2,x,3': expected NAME=D0,D1"),
    (lambda: specs.parse_shape('2,3'), "bad shape '2,3'"),
    (lambda: specs.parse_shape('q=2,3:fp8'), "unknown dtype 'fp8'"),
])
def test_errors_name_what_is_wrong(call, message):
    with pytest.raises(BenchmarkError, match=message):
        call()


def test_cuda_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(BenchmarkError, match="device 'cuda' is not available.*allowed: cpu"):
        specs.check_device_dtype('cuda', 'fp32')


def test_parse_shape():
    assert specs.parse_shape('q=2,4,56,32') == ('q', dict(shape=[2, 4, 56, 32], dtype=None))
    assert specs.parse_shape('k=1,2:bf16') == ('k', dict(shape=[1, 2], dtype='bf16'))
    assert specs.check_device_dtype('cpu', 'bf16') == (torch.device('cpu'), torch.bfloat16)


def test_input_spec_file(tmp_path):
    path = tmp_path / 'spec.yaml'
    path.write_text('q: [2, 4, 8, 16]\nk: {shape: [2, 4, 8, 16], dtype: bf16, requires_grad: false}\nis_causal: true\n')
    spec = specs.load_input_spec(str(path))
    assert spec == dict(q=dict(shape=[2, 4, 8, 16]), k=dict(shape=[2, 4, 8, 16], dtype='bf16', requires_grad=False),
                        is_causal=True)
    path.write_text('- 1\n')
    with pytest.raises(BenchmarkError, match='must be a mapping'):
        specs.load_input_spec(str(path))


def test_kernel_case(tmp_path):
    case = tmp_path / 'case.yaml'
    case.write_text(f'description: tiny attention\nkernel: {SDPA}\nanchors: pkg.mod:ref\n'
                    'inputs: {q: [1, 2, 8, 4], scale: 0.5}\nmodes: inference\n')
    assert specs.load_case(str(case)) == specs.KernelCase(
        SDPA, ['pkg.mod:ref'], dict(q=dict(shape=[1, 2, 8, 4]), scale=0.5), ['inference'], 'cpu')


@pytest.mark.parametrize('text, message', [
    ('kernel: a:b\n', 'must be a mapping with keys kernel and inputs'),
    ('kernel: a:b\ninputs: {q: [1]}\nruns: 3\n', r"unknown keys \['runs'\]"),
    ('kernel: [a]\ninputs: {q: [1]}\n', 'kernel and anchors are import paths'),
    ('kernel: a:b\ninputs: [1, 2]\n', 'inputs must be a mapping'),
    ('kernel: a:b\ninputs: {q: [1]}\nmodes: [eval]\n', 'modes must be a non-empty list of inference, train'),
    ('kernel: a:b\ninputs: {q: [1]}\ndevice: tpu\n', 'device must be cpu or cuda'),
    ('kernel: a:b\ninputs: {q: [1]\n', 'cannot read case'),
])
def test_bad_case_file(tmp_path, text, message):
    case = tmp_path / 'case.yaml'
    case.write_text(text)
    with pytest.raises(BenchmarkError, match=message):
        specs.load_case(str(case))


def test_family_config(tmp_path):
    path = tmp_path / 'van.yaml'
    path.write_text('description: why\nmodel: zoo_van_b1\nanchors:\n  - timm:resnet18\n'
                    '  - {name: timm:maxvit_tiny_tf_224, size_kwarg: img_size, kwargs: {drop_rate: 0.0}}\n')
    assert specs.load_family_config(str(path)) == specs.FamilyConfig('zoo_van_b1', [
        specs.AnchorSpec('timm:resnet18', {}), specs.AnchorSpec('timm:maxvit_tiny_tf_224', dict(drop_rate=0.0),
                                                                'img_size')])
    path.write_text('description: only the model\nmodel: zoo_van_b1\n')
    assert specs.load_family_config(str(path)) == specs.FamilyConfig('zoo_van_b1', None)
    path.write_text('anchors: []\n')
    assert specs.load_family_config(str(path)) == specs.FamilyConfig(None, [])


@pytest.mark.parametrize('text, message', [
    ('- a\n', 'must be a mapping with keys'),
    ('anchor: timm:resnet18\n', r"unknown keys \['anchor'\]"),
    ('model: [zoo_van_b0]\n', 'model must be a model name'),
    ('anchors: timm:resnet18\n', 'anchors must be a list'),
    ('anchors: [{kwargs: {}}]\n', 'an anchor is a model name or a mapping with name'),
    ('anchors: [{name: a, size: img_size}]\n', 'an anchor is a model name or a mapping with name'),
    ('anchors: [{name: a, kwargs: [1]}]\n', 'an anchor is a model name or a mapping with name'),
])
def test_bad_family_config(tmp_path, text, message):
    path = tmp_path / 'x.yaml'
    path.write_text(text)
    with pytest.raises(BenchmarkError, match=message):
        specs.load_family_config(str(path))
