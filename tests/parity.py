"""Parity fixtures: numbers produced by an original implementation, kept as data in tests/fixtures/.

A fixture is one safetensors file. Its metadata holds
  ``model_name``     the zoo entrypoint that must reproduce it (e.g. ``zoo_van_b0``),
  ``model_kwargs``   JSON kwargs for that entrypoint (small dims/depths keep the file small),
  ``wrapper_key``    the key the original checkpoint nests its state dict under ('' for none),
  ``source``         the original repository and commit, and what was run;
its tensors are ``input``, ``output`` and the original checkpoint's state dict under ``ckpt.<key>``.
"""
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch
from safetensors import safe_open

FIXTURES = Path(__file__).parent / 'fixtures'
CKPT_PREFIX = 'ckpt.'


@dataclass
class ParityFixture:
    model_name: str
    model_kwargs: Dict[str, Any]
    wrapper_key: str
    source: str
    input: torch.Tensor
    output: torch.Tensor
    state_dict: Dict[str, torch.Tensor]

    def save_original_checkpoint(self, path: Path) -> Path:
        """Write the state dict as the original repository ships it (a torch file, maybe nested)."""
        torch.save({self.wrapper_key: self.state_dict} if self.wrapper_key else self.state_dict, path)
        return path


def load_parity_fixture(name: str) -> ParityFixture:
    path = FIXTURES / f'{name}.safetensors'
    with safe_open(path, framework='pt') as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return ParityFixture(
        model_name=meta['model_name'],
        model_kwargs=json.loads(meta.get('model_kwargs', '{}')),
        wrapper_key=meta.get('wrapper_key', ''),
        source=meta['source'],
        input=tensors.pop('input'),
        output=tensors.pop('output'),
        state_dict={k[len(CKPT_PREFIX):]: v for k, v in tensors.items() if k.startswith(CKPT_PREFIX)},
    )


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4, msg: str = ''):
    """Max abs difference within `rel` of the expected tensor's largest magnitude (the parity bar: 1e-4 relative)."""
    err, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert actual.shape == expected.shape and err <= rel * scale, f'{msg} max abs error {err:.3g}, scale {scale:.3g}'


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init value (norms and bias tables too), so each one must be loaded to match;
    BatchNorm statistics are set as if trained."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def original_key_shapes(family: str) -> Dict[str, Dict[str, Tuple[int, ...]]]:
    """``tests/fixtures/<family>_original_keys.json.gz``: per variant, the original checkpoint's key -> shape."""
    with gzip.open(FIXTURES / f'{family}_original_keys.json.gz', 'rt') as f:
        return json.load(f)['variants']


def assert_original_keys_map_exactly(model_name: str, shapes: Dict[str, Tuple[int, ...]], filter_fn: Callable):
    """Every key of an original checkpoint maps onto exactly one key of the zoo model, with its shape."""
    import timm
    with torch.device('meta'):
        model = timm.create_model(model_name)
        original = {k: torch.empty(shape) for k, shape in shapes.items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {k: tuple(v.shape) for k, v in filter_fn(original, model).items()}
    assert len(mapped) == len(original), 'two original keys map onto one'
    assert sorted(set(mapped) - set(ours)) == [], 'original keys that map to nothing'
    assert sorted(set(ours) - set(mapped)) == [], 'model keys no original key maps to'
    assert {k: s for k, s in mapped.items() if ours[k] != s} == {}, 'shape mismatches'
