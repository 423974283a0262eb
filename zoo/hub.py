"""Pretrained weights: where they come from, how they are checked, how they are loaded.

Every zoo model builds through :func:`build_model_with_cfg`, a drop-in for timm's function of the
same name. With ``pretrained=True`` it finds the weights file named by the model's pretrained cfg, in
this order:

1. ``file``: an explicit local file (``pretrained_cfg_overlay=dict(file=...)``);
2. a local mirror, the folder named by the environment variable ``ZOO_WEIGHTS_DIR``, laid out as
   ``<hf_hub_id>/<filename>`` for Hugging Face weights and ``<basename of url>`` for URL weights
   (see :func:`mirror_path`); beside that place, a file converted by ``tools/convert.py --mirror``
   (:func:`converted_path`) with its manifest (:func:`manifest_path`);
3. the Hugging Face hub (``hf_hub_id``, optional ``hf_hub_filename``), through huggingface_hub's cache;
4. ``url``, from torch.hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``, where torch.hub and
   timm keep what they download) or ``cache_dir``, downloaded there when missing.

The sha256 of released files is registered by location (:func:`register_sha256s`: ``hf-hub:<repo>/<file>``
or the url, what :func:`weight_location` gives), never by a local path. Every file obtained for a location
(mirror, Hugging Face cache, download) is checked against its digest where one is registered; a converted
mirror file is checked against its manifest, whose source must be the released file. A caller's own
``file`` is not the released file: it is checked against a manifest beside it (a converted file), or, in a cfg that
names no source, against a digest registered for its ``file://`` uri.
A URL download goes to a ``.partial`` name and is renamed only once its size matches ``Content-Length``
and its digest matches; a short or wrong download is retried once, then refused.
Files are read without unpickling arbitrary objects: safetensors, or ``torch.load(weights_only=True)``
with a minimal allow-list (:data:`SAFE_GLOBALS`). The state dict then goes through timm's own
``load_pretrained`` (the model's checkpoint filter, classifier and input-channel adaptation); weights that do
not fit the model raise a :class:`WeightsMismatchError` that summarises the keys.
"""
import argparse
import collections
import hashlib
import http.client
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch
from timm.models import build_model_with_cfg as _timm_build_model_with_cfg
from timm.models import resolve_pretrained_cfg
from timm.models._helpers import clean_state_dict

__all__ = [
    'WEIGHTS_DIR_ENV', 'SAFE_GLOBALS', 'DEFAULT_STATE_DICT_KEYS', 'MANIFEST_FORMAT', 'WeightsNotFoundError',
    'CorruptWeightsError', 'WeightsMismatchError', 'register_sha256s', 'expected_sha256', 'weight_location',
    'mirror_path', 'converted_path', 'manifest_path', 'read_manifest', 'write_manifest', 'url_cache_dir',
    'resolve_weights', 'read_checkpoint', 'load_checkpoint', 'unwrap_state_dict', 'build_model_with_cfg',
    'file_sha256', 'create_partial',
]

_logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = 'ZOO_WEIGHTS_DIR'
DEFAULT_HF_FILENAME = 'model.safetensors'
MANIFEST_FORMAT = 'zoo-converted-weights/1'
_CONVERTED_SUFFIX, _MANIFEST_SUFFIX = '.zoo.safetensors', '.zoo.json'
_DOWNLOAD_ATTEMPTS = 2


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


class WeightsMismatchError(RuntimeError):
    """The weights file is readable but its state dict does not fit the model (another variant, other kwargs)."""

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mis_shaped: Sequence[str] = ()):
        super().__init__(message)
        self.missing, self.unexpected, self.mis_shaped = list(missing), list(unexpected), list(mis_shaped)


def _is_location(key: str) -> bool:
    return key.startswith('hf-hub:') or bool(re.match(r'^[a-z][a-z0-9+.-]*://', key))


def register_sha256s(digests: Mapping[str, str]) -> None:
    """Record the sha256 of released weight files, keyed by location (what :func:`weight_location` gives for
    their cfg: ``hf-hub:<repo>/<filename>`` or a url). Every family registers its digests with one call beside
    its ``default_cfgs``, citing where each digest was published. A local path is not a location: the same file
    has many spellings, and a file of one's own is not a released file."""
    checked = {}
    for location, sha256 in digests.items():
        if not _is_location(location):
            raise ValueError(f'sha256 for {location!r}: register digests by the weights\' location, '
                             f'hf-hub:<repo>/<filename> or a url (scheme://...), not by a local path')
        digest = sha256.lower()
        if len(digest) != 64 or any(c not in '0123456789abcdef' for c in digest):
            raise ValueError(f'sha256 for {location!r} must be 64 hex digits, got {sha256!r}')
        checked[location] = digest
    _SHA256.update(checked)


def expected_sha256(location: str) -> Optional[str]:
    return _SHA256.get(location)


def weight_location(cfg: Dict[str, Any]) -> str:
    """What identifies the weights a cfg names, whatever file serves them: ``hf-hub:<repo>/<filename>`` or the url
    (the key of :func:`register_sha256s`); for a cfg naming only a local ``file``, that file's ``file://`` uri."""
    if cfg.get('hf_hub_id'):
        return f"hf-hub:{cfg['hf_hub_id']}/{cfg.get('hf_hub_filename') or DEFAULT_HF_FILENAME}"
    if cfg.get('url'):
        return cfg['url']
    if cfg.get('file'):
        return Path(cfg['file']).expanduser().resolve().as_uri()
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


def converted_path(original: Union[str, Path]) -> Path:
    """Where ``tools/convert.py --mirror`` puts the converted form of the file whose mirror place is `original`
    (``van_tiny_754.pth.tar`` -> ``van_tiny_754.pth.tar.zoo.safetensors``): a name of its own, beside it."""
    original = Path(original)
    return original.with_name(original.name + _CONVERTED_SUFFIX)


def manifest_path(converted: Union[str, Path]) -> Path:
    """The manifest beside a converted file (``<original name>.zoo.json``): where it came from and its digests."""
    converted = Path(converted)
    return converted.with_name(converted.name.removesuffix(_CONVERTED_SUFFIX) + _MANIFEST_SUFFIX)


def read_manifest(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        if manifest.get('format') != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        for section, keys in (('source', ('location', 'sha256')), ('converted', ('name', 'sha256'))):
            if not all(isinstance(manifest[section].get(k), str) for k in keys):
                raise ValueError(f'{section} needs {", ".join(keys)}')
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptWeightsError(f'Manifest {path} of a converted weights file is unreadable: {e}. '
                                  f'Convert again with tools/convert.py --mirror.') from None
    return manifest


def write_manifest(converted: Union[str, Path], location: str, source_name: str, source_sha256: str,
                   model: str = '') -> Path:
    """Write the manifest of a converted file (what tools/convert.py does beside a mirror file): the location and
    sha256 of the file it was converted from, its own name and sha256. Atomic; mode as the umask allows."""
    converted = Path(converted)
    record = {
        'format': MANIFEST_FORMAT,
        'model': model,
        'source': {'location': location, 'name': source_name, 'sha256': source_sha256},
        'converted': {'name': converted.name, 'sha256': file_sha256(converted), 'bytes': converted.stat().st_size},
    }
    path = manifest_path(converted)
    partial = create_partial(path)
    try:
        partial.write_text(json.dumps(record, indent=2) + '\n')
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def url_cache_dir() -> Path:
    """torch.hub's checkpoint folder, where ``torch.hub.load_state_dict_from_url`` and timm keep URL weights."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def file_sha256(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def create_partial(target: Union[str, Path], suffix: str = '.partial') -> Path:
    """A new empty file beside `target` to write it under (``.<name>.<random><suffix>``), created with the mode the
    umask allows, as a plain ``open`` does (``tempfile.mkstemp`` would make it 0600 whatever the umask)."""
    target = Path(target)
    while True:
        partial = target.with_name(f'.{target.name}.{secrets.token_hex(4)}{suffix}')
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return partial
        except FileExistsError:
            continue


def _verify(path: Path, location: str, sha256: Optional[str] = None) -> None:
    expected = expected_sha256(location)
    if expected is None:
        return
    actual = sha256 or file_sha256(path)
    if actual != expected:
        hint = 'Delete it and download again.'
        if _converted_by_zoo(path):
            hint = (f'It is a file converted by the zoo, kept under the original\'s name by an older tools/convert.py; '
                    f'convert again with --mirror (it then gets a name and manifest of its own, '
                    f'{converted_path(path).name}) or delete it.')
        raise CorruptWeightsError(
            f'Weights file {path} (for {location}) has sha256 {actual}, expected {expected}: the file is '
            f'truncated, corrupt or a different file. {hint}')


def _converted_by_zoo(path: Path) -> bool:
    try:
        if not _is_safetensors(path):
            return False
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            return 'zoo_model' in (f.metadata() or {})
    except Exception:
        return False


def _verify_converted(path: Path, location: Optional[str]) -> None:
    """A converted file against its manifest: its own digest, and (for a mirror place) that it was converted from
    the released file of `location`."""
    manifest_file = manifest_path(path)
    if not manifest_file.is_file():
        raise CorruptWeightsError(
            f'Converted weights file {path} has no manifest {manifest_file.name} beside it, so nothing says what it '
            f'was converted from; convert again with tools/convert.py --mirror.')
    manifest = read_manifest(manifest_file)
    source = manifest['source']
    if location is not None:
        if source['location'] != location:
            raise CorruptWeightsError(
                f'Converted weights file {path} was converted from {source["location"]} (manifest {manifest_file}), '
                f'not from {location}')
        published = expected_sha256(location)
        if published is not None and source['sha256'] != published:
            raise CorruptWeightsError(
                f'Converted weights file {path} was converted from a file with sha256 {source["sha256"]}, but '
                f'{location} was published with sha256 {published}: it is not a conversion of the released file. '
                f'Convert the released file again with tools/convert.py --mirror.')
    actual = file_sha256(path)
    if actual != manifest['converted']['sha256']:
        raise CorruptWeightsError(
            f'Converted weights file {path} has sha256 {actual}, but its manifest {manifest_file.name} says '
            f'{manifest["converted"]["sha256"]}: it is truncated or corrupt. Convert again with tools/convert.py.')


def resolve_weights(cfg: Dict[str, Any], cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Local path of the (verified) weights file named by a pretrained cfg; downloads when needed."""
    name = _cfg_name(cfg)
    if cfg.get('file'):
        path = Path(cfg['file']).expanduser()
        if path.is_dir():
            raise WeightsNotFoundError(f'Pretrained weights file {path} given for {name} is a directory, not a file')
        if not path.is_file():
            raise WeightsNotFoundError(f'Pretrained weights file {path} given for {name} does not exist')
        if path.name.endswith(_CONVERTED_SUFFIX) and manifest_path(path).is_file():
            _verify_converted(path, None)
        elif not (cfg.get('hf_hub_id') or cfg.get('url')):
            _verify(path, weight_location(cfg))  # a digest registered for the file's own uri, if any
        return path

    location = weight_location(cfg)
    mirrored = mirror_path(cfg)
    if mirrored is not None:
        if mirrored.is_file():
            _verify(mirrored, location)
            return mirrored
        converted = converted_path(mirrored)
        if converted.is_file():
            _verify_converted(converted, location)
            return converted

    if cfg.get('hf_hub_id'):
        path = _download_from_hf(cfg, cache_dir, mirrored)
        _verify(path, location)
        return path
    return _download_url(cfg['url'], location, cache_dir)


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


class _ShortDownload(CorruptWeightsError):
    pass


def _download_url(url: str, location: str, cache_dir) -> Path:
    target_dir = Path(cache_dir) if cache_dir else url_cache_dir()
    target = target_dir / _url_basename(url)
    if target.is_file():
        _verify(target, location)
        return target
    if os.environ.get('HF_HUB_OFFLINE') == '1' and urlparse(url).scheme not in ('file', ''):
        raise WeightsNotFoundError(
            f'{target} is not cached and downloads are off (HF_HUB_OFFLINE=1): cannot fetch {url}. Put the file in '
            f'a mirror folder named by {WEIGHTS_DIR_ENV}, or pass pretrained_cfg_overlay=dict(file=...).')
    target_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
        try:
            _fetch(url, target, location)
            return target
        except (CorruptWeightsError, WeightsNotFoundError) as e:  # short, wrong or failed: once more, then give up
            if attempt == _DOWNLOAD_ATTEMPTS:
                raise type(e)(f'{e} (after {attempt} attempts; nothing was kept in {target_dir})') from None
            _logger.warning(f'{e}; downloading again')
    raise AssertionError('unreachable')


def _fetch(url: str, target: Path, location: str) -> None:
    """One download of `url` into a partial file, renamed to `target` only when complete and verified."""
    partial = create_partial(target)
    try:
        _logger.info(f'Downloading {url} to {target}')
        digest, received, announced = hashlib.sha256(), 0, None
        try:
            with urlopen(Request(url, headers={'User-Agent': 'zoo'}), timeout=60) as response, \
                    open(partial, 'wb') as f:
                length = response.headers.get('Content-Length')
                announced = int(length) if length and length.strip().isdigit() else None
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except http.client.IncompleteRead as e:  # a chunked response that ended early
            received += len(e.partial)
        if announced is not None and received != announced:
            raise _ShortDownload(
                f'Download of {url} ended early: received {received} bytes of the {announced} announced '
                f'(Content-Length)')
        _verify(partial, location, digest.hexdigest())
        os.replace(partial, target)
    except OSError as e:
        raise WeightsNotFoundError(f'Could not download {url}: {e}') from e
    finally:
        partial.unlink(missing_ok=True)


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
    """By content, not name: a safetensors file may carry another name (e.g. ``.pth``)."""
    if path.suffix == '.safetensors':
        return True
    with open(path, 'rb') as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < path.stat().st_size


def _describe(items: Sequence[str], limit: int = 4) -> str:
    return ', '.join(items[:limit]) + (f' and {len(items) - limit} more' if len(items) > limit else '')


_LOAD_ERROR = 'Error(s) in loading state_dict'
_SIZE_MISMATCH = re.compile(
    r'size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, '
    r'the shape in current model is torch\.Size\(\[([^\]]*)\]\)')


def _key_list(message: str, label: str) -> List[str]:
    match = re.search(label + r' key\(s\) in state_dict: (.*)', message)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def _mismatch_summary(message: str) -> Tuple[List[str], List[str], List[str]]:
    """The missing, unexpected and mis-shaped keys that ``load_state_dict(strict=True)`` lists in its error."""
    mis_shaped = [f'{k} ([{file}] in the file, [{model}] in the model)'
                  for k, file, model in _SIZE_MISMATCH.findall(message)]
    return _key_list(message, 'Missing'), _key_list(message, 'Unexpected'), mis_shaped


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
    source = None
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
        if cfg.get('state_dict') is None:
            source = resolve_weights(cfg, cache_dir=cache_dir)
            state_dict = load_checkpoint(source, state_dict_keys)
            pretrained_cfg_overlay = dict(pretrained_cfg_overlay or {}, state_dict=state_dict)
    try:
        model = _timm_build_model_with_cfg(
            model_cls, variant, pretrained,
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            cache_dir=cache_dir,
            **kwargs,
        )
    except RuntimeError as e:
        if not (pretrained and str(e).startswith(_LOAD_ERROR)):
            raise
        # torch lists every key, one line each (hundreds for another variant's weights): summarise
        missing, unexpected, mis_shaped = _mismatch_summary(str(e))
        lines = [f'The weights {("in " + str(source)) if source else "given"} do not fit {variant} as built '
                 f'(weights of another variant, or other model arguments?):']
        for items, what in ((missing, 'missing from the file'), (unexpected, 'in the file but not the model'),
                            (mis_shaped, 'of another shape')):
            if items:
                lines.append(f'  {len(items)} keys {what}: {_describe(items)}')
        raise WeightsMismatchError('\n'.join(lines), missing, unexpected, mis_shaped) from None
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
