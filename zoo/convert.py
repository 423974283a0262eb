"""Turn an original authors' checkpoint into a clean zoo safetensors file.

The model's own ``checkpoint_filter_fn`` does the renaming; this module checks that the result fits the
model exactly (no unknown, missing or mis-shaped keys) and writes it atomically with its sha256, ready for
``pretrained_cfg_overlay=dict(file=...)`` or a ``ZOO_WEIGHTS_DIR`` mirror. In a mirror the converted file gets
a name of its own beside the original's place (:func:`zoo.hub.converted_path`) and a manifest (where it came
from, the source's sha256 and its own) that the hub checks it against; only the released file (its registered
sha256, where one is published) is converted into a mirror. Files are written with the mode the umask allows.
"""
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

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
    manifest: Optional[Path] = None  # written beside a mirror file


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


def _write_atomically(dst: Path, write: Callable[[Path], None]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = hub.create_partial(dst)
    mode = stat.S_IMODE(partial.stat().st_mode)  # what the umask allows; safetensors writes 0600 files
    try:
        write(partial)
        os.chmod(partial, mode)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)


def convert_checkpoint(
        model_name: str,
        src: Union[str, Path],
        dst: Optional[Union[str, Path]] = None,
        mirror: Optional[Union[str, Path]] = None,
        **model_kwargs,
) -> ConvertedCheckpoint:
    """Convert `src` for `model_name` and write it to `dst`, or to its place in the `mirror` folder.

    The mirror place is that of the model's pretrained tag (``zoo_van_b0.official_in1k``; the default tag when
    the name has none): :func:`zoo.hub.converted_path` of the original file's place, with a manifest beside it.
    `src` must then be the released file: a published sha256 that it does not match is refused.
    """
    if (dst is None) == (mirror is None):
        raise ValueError('Give exactly one of dst (a file) or mirror (a ZOO_WEIGHTS_DIR folder)')
    if split_model_name_tag(model_name)[0] not in timm.list_models('zoo_*'):
        raise ConversionError(f'Unknown zoo model {model_name!r}; choose one of zoo.list_models()')
    location = None
    if mirror is not None:
        cfg = get_pretrained_cfg(model_name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise ConversionError(f'{model_name} has no pretrained weight source, so it has no place in a mirror')
        cfg = cfg.to_dict()
        location = hub.weight_location(cfg)
        dst = hub.converted_path(hub.mirror_path(cfg, root=mirror))
    dst = Path(dst)
    if dst.is_dir():
        raise ConversionError(f'{dst} is a directory; give the file to write (e.g. {dst / "weights.safetensors"}), '
                              f'or use it as a mirror folder')
    state_dict = hub.load_checkpoint(src, _state_dict_keys(model_name))
    source_sha256 = None
    if location is not None:
        source_sha256 = hub.file_sha256(src)
        published = hub.expected_sha256(location)
        if published is not None and source_sha256 != published:
            raise ConversionError(
                f'{src} is not the released file of {model_name} ({location}): its sha256 is {source_sha256}, the '
                f'published one {published}. A mirror holds conversions of the released file only; convert a file of '
                f'your own to a file (-o) and load it with pretrained_cfg_overlay=dict(file=...)')
    tensors = map_checkpoint(model_name, state_dict, **model_kwargs)

    metadata = {'format': 'pt', 'zoo_model': model_name, 'source': Path(src).name}
    _write_atomically(dst, lambda path: save_file(tensors, path, metadata=metadata))
    sha256 = hub.file_sha256(dst)
    manifest = None
    if location is not None:
        manifest = hub.write_manifest(dst, location, Path(src).name, source_sha256, model=model_name)
    return ConvertedCheckpoint(path=dst, sha256=sha256, num_tensors=len(tensors), manifest=manifest)
