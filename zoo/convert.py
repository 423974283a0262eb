"""Turn an original authors' checkpoint into a clean zoo safetensors file.

The model's own ``checkpoint_filter_fn`` does the renaming; this module checks that the result fits the
model exactly (no unknown, missing or mis-shaped keys) and writes it atomically with its sha256, ready for
``pretrained_cfg_overlay=dict(file=...)`` or a ``ZOO_WEIGHTS_DIR`` mirror.
"""
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg, model_entrypoint, split_model_name_tag

from . import hub

__all__ = ['ConversionError', 'ConvertedCheckpoint', 'convert_checkpoint', 'map_checkpoint']


class ConversionError(ValueError):
    """The checkpoint does not fit the model it is converted for."""


@dataclass
class ConvertedCheckpoint:
    path: Path
    sha256: str
    num_tensors: int


def _family_module(model_name: str):
    return sys.modules[model_entrypoint(split_model_name_tag(model_name)[0]).__module__]


def _filter_fn(model_name: str):
    return getattr(_family_module(model_name), 'checkpoint_filter_fn', None)


def _state_dict_keys(model_name: str) -> Sequence[str]:
    """The order in which the family picks the weights out of a training checkpoint (EMA first unless it says)."""
    module = _family_module(model_name)
    return getattr(module, 'STATE_DICT_KEYS', hub.DEFAULT_STATE_DICT_KEYS)


def _describe(keys: List[str], limit: int = 8) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def map_checkpoint(
        model_name: str,
        state_dict: Dict[str, torch.Tensor],
        **model_kwargs,
) -> Dict[str, torch.Tensor]:
    """The state dict renamed for `model_name` (a zoo name, optionally with a tag), checked to fit exactly."""
    name, _ = split_model_name_tag(model_name)
    if name not in timm.list_models('zoo_*'):
        raise ConversionError(f'Unknown zoo model {name!r}; choose one of zoo.list_models()')
    with torch.device('meta'):  # shapes and names only: no memory, no init
        model = timm.create_model(name, **model_kwargs)
    filter_fn = _filter_fn(name)
    mapped = filter_fn(state_dict, model) if filter_fn is not None else state_dict
    expected: Dict[str, Tuple[int, ...]] = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    unknown = sorted(set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    mis_shaped = [f'{k} {tuple(mapped[k].shape)} (model: {expected[k]})'
                  for k in sorted(set(mapped) & set(expected)) if tuple(mapped[k].shape) != expected[k]]
    problems = []
    if unknown:
        problems.append(f'{len(unknown)} unknown keys: {_describe(unknown)}')
    if missing:
        problems.append(f'{len(missing)} missing keys: {_describe(missing)}')
    if mis_shaped:
        problems.append(f'{len(mis_shaped)} keys of another shape: {_describe(mis_shaped)}')
    if problems:
        hint = ''
        cfg = get_pretrained_cfg(name)
        classifier = cfg.classifier if cfg is not None else None
        if classifier and all(p.startswith(classifier) for p in mis_shaped) and not unknown and not missing:
            hint = ' (only the classifier differs: pass the checkpoint\'s class count as num_classes)'
        raise ConversionError(f'The checkpoint does not fit {name}: ' + '; '.join(problems) + hint)
    return {k: v.contiguous() for k, v in mapped.items()}


def convert_checkpoint(
        model_name: str,
        src: Union[str, Path],
        dst: Optional[Union[str, Path]] = None,
        mirror: Optional[Union[str, Path]] = None,
        **model_kwargs,
) -> ConvertedCheckpoint:
    """Convert `src` for `model_name` and write it to `dst`, or to its place in the `mirror` folder.

    The mirror place is that of the model's pretrained tag (``zoo_van_b0.official_in1k``); the default tag
    is used when the name has none.
    """
    if (dst is None) == (mirror is None):
        raise ValueError('Give exactly one of dst (a file) or mirror (a ZOO_WEIGHTS_DIR folder)')
    if mirror is not None:
        cfg = get_pretrained_cfg(model_name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise ConversionError(f'{model_name} has no pretrained weight source, so it has no place in a mirror')
        dst = hub.mirror_path(cfg.to_dict(), root=mirror)
    dst = Path(dst)
    if split_model_name_tag(model_name)[0] not in timm.list_models('zoo_*'):
        raise ConversionError(f'Unknown zoo model {model_name!r}; choose one of zoo.list_models()')
    state_dict = hub.load_checkpoint(src, _state_dict_keys(model_name))
    tensors = map_checkpoint(model_name, state_dict, **model_kwargs)

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=dst.name + '.', suffix='.partial', dir=dst.parent)
    os.close(fd)
    try:
        save_file(tensors, partial, metadata={'format': 'pt', 'zoo_model': model_name, 'source': Path(src).name})
        os.replace(partial, dst)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return ConvertedCheckpoint(path=dst, sha256=hub.file_sha256(dst), num_tensors=len(tensors))
