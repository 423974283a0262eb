import threading

import pytest
import torch

import kernels
from kernels.backend import ENV_VAR, requested_backend, resolve_backend, select, use_backend

IMPLS = {'reference': lambda: 'reference', 'cpu': lambda: 'cpu', 'triton': lambda: 'triton'}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)


def test_auto_is_cpu_path_for_cpu_tensors():
    x = torch.zeros(2)
    assert requested_backend() == 'auto'
    assert resolve_backend(x) == 'cpu'
    assert select('op', IMPLS, [x], lambda: None)() == 'cpu'


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, 'reference')
    assert resolve_backend(torch.zeros(1)) == 'reference'
    monkeypatch.setenv(ENV_VAR, ' CPU ')
    assert resolve_backend(torch.zeros(1)) == 'cpu'


def test_env_var_rejects_unknown_name(monkeypatch):
    monkeypatch.setenv(ENV_VAR, 'cuda')
    with pytest.raises(ValueError, match=r"'cuda' from \$ZOO_KERNELS.*auto, reference, cpu, triton"):
        resolve_backend(torch.zeros(1))


def test_context_manager_overrides_env_and_nests(monkeypatch):
    monkeypatch.setenv(ENV_VAR, 'cpu')
    x = torch.zeros(1)
    with use_backend('reference'):
        assert resolve_backend(x) == 'reference'
        with kernels.use_backend('cpu'):
            assert resolve_backend(x) == 'cpu'
        assert resolve_backend(x) == 'reference'
    assert resolve_backend(x) == 'cpu'


def test_context_manager_restores_after_exception():
    with pytest.raises(KeyError):
        with use_backend('reference'):
            raise KeyError('boom')
    assert requested_backend() == 'auto'


def test_context_manager_rejects_unknown_name():
    with pytest.raises(ValueError, match='Unknown kernel backend'):
        with use_backend('fast'):
            pass


def test_override_is_local_to_a_thread():
    seen = {}
    with use_backend('reference'):
        worker = threading.Thread(target=lambda: seen.setdefault('other', requested_backend()))
        worker.start()
        worker.join()
        assert requested_backend() == 'reference'
    assert seen['other'] == 'auto'


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(kernels.backend, 'triton_available', lambda: True)
    x = torch.zeros(1)
    with use_backend('triton'):
        with pytest.raises(RuntimeError, match='needs CUDA tensors.*TRITON_INTERPRET=1'):
            resolve_backend(x)
        monkeypatch.setenv('TRITON_INTERPRET', '1')
        assert resolve_backend(x) == 'triton'


def test_triton_requested_but_missing(monkeypatch):
    monkeypatch.setattr(kernels.backend, 'triton_available', lambda: False)
    with use_backend('triton'), pytest.raises(RuntimeError, match='cannot be imported'):
        resolve_backend(torch.zeros(1))


def test_auto_picks_triton_only_for_cuda_tensors(monkeypatch):
    monkeypatch.setattr(kernels.backend, 'triton_available', lambda: True)
    cuda_like = torch.empty(1, device='meta')
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda self: self.device.type == 'meta'))
    assert resolve_backend(cuda_like) == 'triton'
    assert resolve_backend(cuda_like, torch.zeros(1)) == 'cpu'


def test_dispatch_names_missing_backend():
    expected = "my_op has no 'reference' backend; it has cpu"
    with use_backend('reference'), pytest.raises(NotImplementedError, match=expected):
        select('my_op', {'cpu': IMPLS['cpu']}, [torch.zeros(1)], lambda: None)


def test_triton_is_importable_here():
    # The CI machine ships triton with torch; if this fails the triton tests of later issues cannot run.
    assert kernels.triton_available()
