"""Training configs: a typed schema, YAML files with ``_base_`` inheritance, and ``key=value`` overrides.

A config file states only what differs from the defaults below; ``_base_`` (a path or a list of paths,
relative to the file) names files merged in first, mmdet style. Every key is checked against the schema:
an unknown key, a value of the wrong type or a value outside its choices raises :class:`ConfigError`
with one line that names the key, the value and what is allowed.
"""
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

__all__ = [
    'ConfigError', 'ModelConfig', 'DataConfig', 'AugConfig', 'OptimConfig', 'SchedConfig', 'AmpConfig', 'EmaConfig',
    'LogConfig', 'TrainConfig', 'load_config', 'parse_overrides', 'config_from_dict', 'config_to_dict',
]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the key and what is allowed."""


def _choices(*values, default):
    return field(default=default, metadata={'choices': values})


@dataclass
class ModelConfig:
    name: str = 'zoo_van_b0'  # a registered zoo (or timm) model name
    pretrained: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model (embed_dims, depths, ...)
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    dataset: str = _choices('digits', 'folder', default='digits')
    root: Optional[str] = None  # ImageFolder root holding <train_split>/ and <val_split>/ class folders
    train_split: str = 'train'
    val_split: str = 'val'
    image_size: Optional[int] = None  # overrides the model's pretrained input size
    digits_val_fraction: float = 0.25  # held-out share of the digits set (stratified, fixed by `seed`)
    batch_size: int = 64
    val_batch_size: Optional[int] = None
    workers: int = 0
    pin_memory: bool = False


@dataclass
class AugConfig:
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3. / 4., 4. / 3.)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: Optional[str] = None  # timm policy string, e.g. rand-m9-mstd0.5-inc1
    re_prob: float = 0.0
    mixup: float = 0.0  # mixup alpha (0 disables)
    cutmix: float = 0.0  # cutmix alpha (0 disables)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass
class OptimConfig:
    name: str = 'adamw'  # any name timm's create_optimizer_v2 knows (adamw, sgd, lamb, ...)
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: Optional[float] = None
    clip_mode: str = _choices('norm', 'value', 'agc', default='norm')
    accum_steps: int = 1


@dataclass
class SchedConfig:
    name: str = _choices('cosine', 'step', 'multistep', 'tanh', 'poly', 'none', default='cosine')
    warmup_epochs: float = 0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6
    decay_epochs: float = 30  # step schedule
    decay_milestones: List[int] = field(default_factory=lambda: [30, 60, 90])  # multistep schedule
    decay_rate: float = 0.1
    step_on_epochs: bool = False  # False: the lr changes every optimizer update


@dataclass
class AmpConfig:
    enabled: bool = False
    dtype: str = _choices('bfloat16', 'float16', default='bfloat16')  # float16 needs a GPU


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.9998
    warmup: bool = False
    eval: bool = True  # also evaluate the EMA weights each epoch


@dataclass
class LogConfig:
    progress: bool = True  # tqdm bars
    wandb: bool = False
    wandb_project: str = 'zoo'
    wandb_mode: Optional[str] = _choices(None, 'online', 'offline', 'disabled', default=None)  # None: WANDB_MODE


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    amp: AmpConfig = field(default_factory=AmpConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    log: LogConfig = field(default_factory=LogConfig)
    epochs: int = 10
    seed: int = 42
    device: str = 'auto'  # auto (cuda when available), cpu, cuda, cuda:1, ...
    output: str = 'output/train'
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    # DDP: make BatchNorm statistics the same on every process before each evaluation (timm's --dist-bn):
    # average them (reduce), copy rank 0's (broadcast), or leave each process its own (none)
    dist_bn: str = _choices('reduce', 'broadcast', 'none', default='reduce')


# a number in decimal or exponent notation; YAML 1.1 (PyYAML) needs a dot to read 2e-3 or 1E5 as a float
_DECIMAL = re.compile(r'[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?')


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return ' or '.join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return 'null' if tp is type(None) else tp.__name__


def _coerce(key: str, value: Any, tp) -> Any:
    """`value` checked against the annotation `tp`; ints are accepted for floats, lists for tuples."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and len(value) != len(args):
                raise ConfigError(f'{key}: expected a list of {len(args)} values, got {value!r}')
            item_types = args if origin is tuple else [args[0]] * len(value)
            items = [_coerce(f'{key}[{i}]', v, t) for i, (t, v) in enumerate(zip(item_types, value))]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is Any:
        return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 2e-3 (no dot) as a string
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f'{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})')


def _build(cls, values: Mapping[str, Any], prefix: str = ''):
    if not isinstance(values, Mapping):
        raise ConfigError(f'{prefix.rstrip(".") or "config"}: expected a mapping of keys, got {values!r}')
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        where = f' in {prefix.rstrip(".")}' if prefix else ''
        raise ConfigError(f'unknown config key {prefix + str(unknown[0])!r}; allowed keys{where}: {", ".join(fields)}')
    kwargs = {}
    for name, value in values.items():
        key, tp = prefix + name, hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key + '.')
            continue
        value = _coerce(key, value, tp)
        choices = fields[name].metadata.get('choices')
        if choices is not None and value not in choices:
            raise ConfigError(f'{key}: {value!r} is not one of {", ".join(repr(c) for c in choices)}')
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A checked :class:`TrainConfig` from a nested dict of (partial) values."""
    cfg = _build(TrainConfig, values)
    _check_values(cfg)
    return cfg


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """Plain nested dict (lists, no tuples): safe in a weights_only checkpoint and in YAML."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def _check_values(cfg: TrainConfig) -> None:
    positive = {
        'epochs': cfg.epochs, 'data.batch_size': cfg.data.batch_size, 'optim.accum_steps': cfg.optim.accum_steps,
        'checkpoint_every': cfg.checkpoint_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f'{key}: must be >= 1, got {value}')
    if cfg.data.workers < 0:
        raise ConfigError(f'data.workers: must be >= 0, got {cfg.data.workers}')
    if not 0 < cfg.data.digits_val_fraction < 1:
        raise ConfigError(f'data.digits_val_fraction: must be in (0, 1), got {cfg.data.digits_val_fraction}')
    if cfg.data.dataset == 'folder' and not cfg.data.root:
        raise ConfigError("data.root: dataset 'folder' needs the ImageFolder root (data.root=path)")
    if cfg.data.image_size is not None and cfg.data.image_size < 1:
        raise ConfigError(f'data.image_size: must be >= 1, got {cfg.data.image_size}')


def _deep_merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for k, v in update.items():
        # model.kwargs is replaced as a whole: a leaf config states its model's arguments completely
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping) and k != 'kwargs':
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _read_yaml(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f'_base_: {path} includes itself')
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'config file {path} is not valid YAML: {" ".join(str(e).split())}') from None
    if not isinstance(values, dict):
        raise ConfigError(f'config file {path}: expected a mapping of keys at the top level')
    bases = values.pop('_base_', [])
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / base, seen + (path,)))
    return _deep_merge(merged, values)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``['optim.lr=0.01', 'model.kwargs={depths: [1, 1, 1, 1]}']`` as a nested dict (values parsed as YAML)."""
    nested: Dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'override: {item!r} is not key=value with a dotted key, e.g. optim.lr=0.01')
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = nested
        parts = key.strip().split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override: {item!r} sets a key inside a value that is not a mapping')
        node[parts[-1]] = value
    return nested


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path` (with its ``_base_`` files), then ``key=value`` overrides."""
    values = _read_yaml(Path(path)) if path is not None else {}
    values = _deep_merge(values, parse_overrides(overrides))
    return config_from_dict(values)
