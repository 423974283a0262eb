"""Pretrained weights: where they come from, how they are checked, how they are loaded.

Every zoo model builds through :func:`build_model_with_cfg`, a drop-in for timm's function of the
same name. With ``pretrained=True`` it finds the weights file named by the model's pretrained cfg, in
this order:

1. ``file``: an explicit local file (``pretrained_cfg_overlay=dict(file=...)``);
2. a local mirror, the folder named by the environment variable ``ZOO_WEIGHTS_DIR``, laid out as
   ``<hf_hub_id>/<filename>`` for Hugging Face weights and ``<basename of url>`` for URL weights
   (see :func:`mirror_path`);
3. the Hugging Face hub (``hf_hub_id``, optional ``hf_hub_filename``), through huggingface_hub's cache;
4. ``url``, downloaded into timm's checkpoint cache (or ``cache_dir``).

A file whose location has a registered sha256 (:func:`register_sha256s`) is verified before it is
used; a URL download is written to a temporary name and renamed only once complete and verified, so
nothing half-written is ever left under the final name. Files are read without unpickling arbitrary
objects: safetensors, or ``torch.load(weights_only=True)`` with a minimal allow-list
(:data:`SAFE_GLOBALS`). The state dict then goes through timm's own ``load_pretrained`` (the model's
checkpoint filter, classifier and input-channel adaptation).
"""
import argparse
import collections
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

import torch
from timm.models import build_model_with_cfg as _timm_build_model_with_cfg
from timm.models import resolve_pretrained_cfg
from timm.models._helpers import clean_state_dict
from timm.models._hub import get_cache_dir

__all__ = [
    'WEIGHTS_DIR_ENV', 'SAFE_GLOBALS', 'DEFAULT_STATE_DICT_KEYS', 'WeightsNotFoundError', 'CorruptWeightsError',
    'register_sha256s', 'expected_sha256', 'weight_location', 'mirror_path', 'resolve_weights',
    'read_checkpoint', 'load_checkpoint', 'unwrap_state_dict', 'build_model_with_cfg', 'file_sha256',
]

_logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = 'ZOO_WEIGHTS_DIR'
DEFAULT_HF_FILENAME = 'model.safetensors'



class _ConfigAsDict:
    """Stands in for yacs' ``CfgNode`` (the config that Swin-style training scripts, e.g. LITv2's, pickle beside
    the weights): read as a plain ordered dict of its entries, whether or not yacs is installed, without running
    any of its code."""

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


# Objects some original checkpoints pickle beside their tensors (training args and configs); nothing executable.
SAFE_GLOBALS = [argparse.Namespace, (_ConfigAsDict, 'yacs.config.CfgNode')]

# Checkpoint keys that wrap the state dict, in order of preference (EMA first, as timm does).
DEFAULT_STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')

_SHA256: Dict[str, str] = {}


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is not where the pretrained cfg says, and cannot be fetched."""


class CorruptWeightsError(RuntimeError):
    """The weights file exists but is truncated, corrupt, or not the file that was expected."""


def register_sha256s(digests: Mapping[str, str]) -> None:
    """Record the sha256 of released weight files, keyed by location (what :func:`weight_location` gives for
    their cfg: ``hf-hub:<repo>/<filename>``, a url, or a path). Every family registers its digests with one call
    beside its ``default_cfgs``, citing where each digest was published."""
    checked = {}
    for location, sha256 in digests.items():
        digest = sha256.lower()
        if len(digest) != 64 or any(c not in '0123456789abcdef' for c in digest):
            raise ValueError(f'sha256 for {location!r} must be 64 hex digits, got {sha256!r}')
        checked[location] = digest
    _SHA256.update(checked)


def expected_sha256(location: str) -> Optional[str]:
    return _SHA256.get(location)


def weight_location(cfg: Dict[str, Any]) -> str:
    """A stable name for the weights a cfg points at; the key of :func:`register_sha256s`."""
    if cfg.get('file'):
        return str(cfg['file'])
    if cfg.get('hf_hub_id'):
        return f"hf-hub:{cfg['hf_hub_id']}/{cfg.get('hf_hub_filename') or DEFAULT_HF_FILENAME}"
    if cfg.get('url'):
        return cfg['url']
    raise WeightsNotFoundError(f'{_cfg_name(cfg)} has no pretrained weights (its cfg names no file, hf_hub_id or url)')


def mirror_path(cfg: Dict[str, Any], root: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """Where the local mirror keeps the weights of `cfg`, or None when no mirror is configured."""
    root = root or os.environ.get(WEIGHTS_DIR_ENV)
    if not root:
        return None
    if cfg.get('hf_hub_id'):
        return Path(root) / cfg['hf_hub_id'] / (cfg.get('hf_hub_filename') or DEFAULT_HF_FILENAME)
    if cfg.get('url'):
        return Path(root) / _url_basename(cfg['url'])
    return None


def file_sha256(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, location: str) -> None:
    expected = expected_sha256(location)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise CorruptWeightsError(
            f'Weights file {path} (for {location}) has sha256 {actual}, expected {expected}: the file is '
            f'truncated, corrupt or a different file. Delete it and download again.')


def resolve_weights(cfg: Dict[str, Any], cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Local path of the (verified) weights file named by a pretrained cfg; downloads when needed."""
    location = weight_location(cfg)
    name = _cfg_name(cfg)
    if cfg.get('file'):
        path = Path(cfg['file']).expanduser()
        if path.is_dir():
            raise WeightsNotFoundError(f'Pretrained weights file {path} given for {name} is a directory, not a file')
        if not path.is_file():
            raise WeightsNotFoundError(f'Pretrained weights file {path} given for {name} does not exist')
        _verify(path, location)
        return path

    mirrored = mirror_path(cfg)
    if mirrored is not None and mirrored.is_file():
        _verify(mirrored, location)
        return mirrored

    if cfg.get('hf_hub_id'):
        path = _download_from_hf(cfg, cache_dir, mirrored)
    else:
        path = _download_url(cfg['url'], location, cache_dir)
    _verify(path, location)
    return path


def _download_from_hf(cfg: Dict[str, Any], cache_dir, mirrored: Optional[Path]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, _, revision = cfg['hf_hub_id'].partition('@')
    filename = cfg.get('hf_hub_filename') or DEFAULT_HF_FILENAME
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        hint = f' (the mirror has no {mirrored})' if mirrored is not None else f' and {WEIGHTS_DIR_ENV} is not set'
        raise WeightsNotFoundError(
            f'Weights for {_cfg_name(cfg)} ({repo_id}/{filename}) are not in the Hugging Face cache and cannot be '
            f'downloaded (offline or unreachable){hint}. Put the file in a mirror folder named by '
            f'{WEIGHTS_DIR_ENV}, or pass pretrained_cfg_overlay=dict(file=...).') from e
    except EntryNotFoundError as e:
        raise WeightsNotFoundError(f'{repo_id} on the Hugging Face hub has no file {filename!r}') from e


def _download_url(url: str, location: str, cache_dir) -> Path:
    target_dir = Path(cache_dir) if cache_dir else Path(get_cache_dir('checkpoints'))
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / _url_basename(url)
    if target.is_file():
        return target
    if os.environ.get('HF_HUB_OFFLINE') == '1' and urlparse(url).scheme not in ('file', ''):
        raise WeightsNotFoundError(
            f'{target} is not cached and downloads are off (HF_HUB_OFFLINE=1): cannot fetch {url}. Put the file in '
            f'a mirror folder named by {WEIGHTS_DIR_ENV}, or pass pretrained_cfg_overlay=dict(file=...).')
    fd, partial = tempfile.mkstemp(prefix=target.name + '.', suffix='.partial', dir=target_dir)
    os.close(fd)
    try:
        _logger.info(f'Downloading {url} to {target}')
        torch.hub.download_url_to_file(url, partial, progress=False)
        _verify(Path(partial), location)
        os.replace(partial, target)
    except BaseException as e:
        Path(partial).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WeightsNotFoundError(f'Could not download {url}: {e}') from e
        raise
    return target


def unwrap_state_dict(checkpoint: Any, keys: Sequence[str] = DEFAULT_STATE_DICT_KEYS) -> Any:
    """The state dict a training checkpoint nests under the first of `keys` it has (by default
    :data:`DEFAULT_STATE_DICT_KEYS`, EMA first, as timm does), or the checkpoint itself when it nests none."""
    if isinstance(checkpoint, dict):
        for key in keys:
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
    return checkpoint


def read_checkpoint(path: Union[str, Path]) -> Any:
    """Everything a weights or checkpoint file holds, read safely: a safetensors file (recognised by content, not
    name), or a torch file through ``torch.load(weights_only=True)`` with the :data:`SAFE_GLOBALS` allow-list."""
    path = Path(path)
    if path.is_dir():
        raise WeightsNotFoundError(f'Weights file {path} is a directory; expected a .safetensors or torch file')
    if not path.is_file():
        raise WeightsNotFoundError(f'Weights file {path} does not exist')
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a damaged file
        raise CorruptWeightsError(
            f'Could not read weights file {path} ({path.stat().st_size} bytes): {type(e).__name__}: {e}. '
            f'Expected a safetensors file or a torch checkpoint of tensors (it may be truncated or corrupt).') from e


def load_checkpoint(
        path: Union[str, Path], state_dict_keys: Sequence[str] = DEFAULT_STATE_DICT_KEYS) -> Dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its state dict, unwrapped (:func:`unwrap_state_dict` with
    `state_dict_keys`) and ``module.``-free."""
    checkpoint = unwrap_state_dict(read_checkpoint(path), state_dict_keys)
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CorruptWeightsError(
            f'Weights file {path} holds no state dict: expected a dict of tensors, optionally under one of '
            f'{tuple(state_dict_keys)}, got {type(checkpoint).__name__}')
    return clean_state_dict(checkpoint)


def _is_safetensors(path: Path) -> bool:
    """By content, not name: a mirror keeps converted safetensors under the original file's name."""
    if path.suffix == '.safetensors':
        return True
    with open(path, 'rb') as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < path.stat().st_size


def build_model_with_cfg(
        model_cls: Callable[..., torch.nn.Module],
        variant: str,
        pretrained: bool = False,
        pretrained_cfg: Optional[Any] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        cache_dir: Optional[Union[str, Path]] = None,
        state_dict_keys: Sequence[str] = DEFAULT_STATE_DICT_KEYS,
        **kwargs,
) -> torch.nn.Module:
    """timm's ``build_model_with_cfg`` with the zoo's weight resolution and safe loading.

    Takes timm's arguments (``pretrained_filter_fn``, ``feature_cfg``, ...); only where the state dict comes
    from differs. `state_dict_keys`: the keys a training checkpoint may nest the weights under, in order of
    preference (a family whose authors evaluate ``model`` rather than ``model_ema`` says so here, and names the
    same order ``STATE_DICT_KEYS`` in its module for tools/convert.py).
    """
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
        if cfg.get('state_dict') is None:
            path = resolve_weights(cfg, cache_dir=cache_dir)
            state_dict = load_checkpoint(path, state_dict_keys)
            pretrained_cfg_overlay = dict(pretrained_cfg_overlay or {}, state_dict=state_dict)
    model = _timm_build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        cache_dir=cache_dir,
        **kwargs,
    )
    # The in-memory state dict served its purpose; do not keep a second copy of the weights alive.
    for module in (model, getattr(model, 'model', None)):
        cfg_dict = getattr(module, 'pretrained_cfg', None)
        if isinstance(cfg_dict, dict):
            cfg_dict.pop('state_dict', None)
    return model


def _cfg_name(cfg: Dict[str, Any]) -> str:
    arch, tag = cfg.get('architecture'), cfg.get('tag')
    return f'{arch}.{tag}' if arch and tag else (arch or 'this model')


def _url_basename(url: str) -> str:
    return os.path.basename(urlparse(url).path)
