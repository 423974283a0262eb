"""``ZooBackbone``: any zoo model (any timm model) as an mmdet 3.x / mmsegmentation 1.x backbone.

Put it into mmdet's or mmseg's own configs with only the neck's/head's ``in_channels`` changed::

    custom_imports = dict(imports=['zoo.mm'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ZooBackbone', model_name='zoo_van_b2', pretrained=True,
                               out_indices=(0, 1, 2, 3)),
                 neck=dict(in_channels=[64, 128, 320, 512]))

Hierarchical models give their stage outputs at strides 4/8/16/32. Plain (isotropic) models, whose ``feature_info``
lists one stride for every block, give four levels at strides 4/8/16/32 too, through a simple feature pyramid inside
the adapter (BEiT/ViTDet style: transposed convs up, identity, max-pool down), fed by four evenly spaced blocks
(``block_indices``; one index feeds every level from that block, as ViTDet does). ``out_indices`` always counts
levels (0 = stride 4), so the same neck config works for both kinds. Nothing here is specific to a family: a family
registered later plugs in by name; only the norms some authors put on the outputs of their dense backbones are
declared per family, in :mod:`zoo.mm.families`.
"""
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import LayerNorm2d
from timm.models import resolve_pretrained_cfg

from zoo import hub

from .families import checkpoint_filter_of, dense_spec, family_of

__all__ = ['ZooBackbone', 'SimplePyramid']

_logger = logging.getLogger(__name__)

PretrainedArg = Union[bool, str, None]


class SimplePyramid(nn.Module):
    """Four levels at strides 4/8/16/32 from a plain model's maps at one stride (16 for a patch-16 ViT).

    Per level, by the ratio of the model's stride to the level's: 2x up is a 2x2 stride-2 transposed conv (4x: two,
    with a norm and GELU between them: LayerNorm2d as ViTDet, or BatchNorm as BEiT's and Vim's segmentation
    backbones), 1x is the identity, down is max-pooling. The channel count stays the model's width on every level.
    """

    NORMS = ('LN', 'BN')

    def __init__(self, channels: int, stride: int, levels: Sequence[int], norm: str = 'LN'):
        super().__init__()
        if norm not in self.NORMS:
            raise ValueError(f'SimplePyramid: norm must be one of {self.NORMS}, got {norm!r}')
        self.levels = tuple(levels)
        self.scales = nn.ModuleDict({
            str(level): self._scale(channels, stride, 4 * 2 ** level, norm) for level in levels})

    @staticmethod
    def _scale(channels: int, stride: int, target: int, norm: str) -> nn.Module:
        if stride == target:
            return nn.Identity()
        if stride < target:
            return nn.MaxPool2d(kernel_size=target // stride, stride=target // stride)
        ups = int(round(math.log2(stride // target)))
        layers: List[nn.Module] = [nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)]
        for _ in range(ups - 1):
            layers += [LayerNorm2d(channels) if norm == 'LN' else nn.BatchNorm2d(channels), nn.GELU(),
                       nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)]
        return nn.Sequential(*layers)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [self.scales[str(level)](x) for level, x in zip(self.levels, features)]


@MODELS.register_module()
class ZooBackbone(BaseModule):
    """A zoo model as a backbone of mmdet/mmseg detectors and segmentors.

    Args:
        model_name: any registered zoo model (``timm.list_models('zoo_*')``); timm's own models work too.
        pretrained: weights for the backbone: True (the model's default pretrained tag), a tag (``'official_in1k'``
            or ``'zoo_van_b2.official_in1k'``), or a file. Tags resolve through :mod:`zoo.hub` (local mirror in
            ``$ZOO_WEIGHTS_DIR``, Hugging Face cache, URL; sha256-checked where registered). A file may be a
            classification checkpoint or one of the authors' detection/segmentation checkpoints (its ``backbone.``
            keys are taken, output norms included).
        out_indices: levels to return, 0-3 for strides 4/8/16/32.
        frozen_stages: -1 freezes nothing; 0 the stem (patch embedding); k > 0 the stem and the first k stages
            (of a plain model: the first k blocks). Frozen parts stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode while training (frozen running statistics).
        with_cp: gradient checkpointing (the model's ``set_grad_checkpointing``).
        out_norms: LayerNorm on returned levels. None: the levels the family's authors' detection backbone
            normalises (:data:`zoo.mm.families.DENSE_SPECS`; none for most families); True: every returned level;
            False: none; a tuple: those levels (e.g. LITv2's segmentation backbone: ``(0, 1, 2, 3)``).
        block_indices: plain models only: the blocks that feed the pyramid, four (one per level, default evenly
            spaced: the last block of each quarter, e.g. (5, 11, 17, 23) of 24) or one (every level from that block).
        pyramid_norm: plain models only: the norm between the two transposed convs of the stride-4 level, 'LN'
            (default, ViTDet) or 'BN' (BEiT's and Vim's segmentation backbones; SyncBN with ``sync_bn='torch'``).
        init_cfg: ``dict(type='Pretrained', checkpoint=<tag, file or True>)`` loads as ``pretrained`` does, when
            mmengine initialises the model; the weights are never re-initialised afterwards.
        **model_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ``n_win``, ...).
    """

    def __init__(
            self,
            model_name: str,
            pretrained: PretrainedArg = False,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            with_cp: bool = False,
            out_norms: Union[bool, Sequence[int], None] = None,
            block_indices: Optional[Sequence[int]] = None,
            pyramid_norm: Optional[str] = None,
            init_cfg: Optional[Dict[str, Any]] = None,
            **model_kwargs,
    ):
        if init_cfg is not None:
            if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
                raise ValueError(f"ZooBackbone: init_cfg must be dict(type='Pretrained', checkpoint=...) or None, got "
                                 f'{init_cfg!r} (the model initialises its own weights as its authors do)')
            if pretrained:
                raise ValueError('ZooBackbone: give the weights either as pretrained= or as init_cfg, not both')
        super().__init__(init_cfg=init_cfg)
        _check_model_name(model_name)
        self.model_name = model_name
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages

        model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        feature_info = list(model.feature_info)
        reductions = [int(info['reduction']) for info in feature_info]
        self.plain = len(set(reductions)) == 1
        self.out_indices = _check_out_indices(model_name, out_indices, 4 if self.plain else None, reductions)

        if self.plain:
            stride, channels = reductions[0], int(feature_info[-1]['num_chs'])
            if stride & (stride - 1) or not 4 <= stride <= 64:
                raise ValueError(f'ZooBackbone: {model_name} is a plain model at stride {stride}; the feature pyramid '
                                 f'needs a power-of-two stride between 4 and 64')
            if pyramid_norm is not None and pyramid_norm not in SimplePyramid.NORMS:
                raise ValueError(f'ZooBackbone: pyramid_norm={pyramid_norm!r}; give one of {SimplePyramid.NORMS}')
            blocks = _plain_blocks(model_name, block_indices, len(feature_info))
            self.take = tuple(blocks[i] if len(blocks) == 4 else blocks[0] for i in self.out_indices)
            self.pyramid = SimplePyramid(channels, stride, self.out_indices, norm=pyramid_norm or 'LN')
            self.out_channels = [channels] * len(self.out_indices)
            units = [info['module'] for info in feature_info]  # frozen_stages counts blocks
        else:
            if block_indices is not None or pyramid_norm is not None:
                arg = 'block_indices' if block_indices is not None else 'pyramid_norm'
                raise ValueError(f'ZooBackbone: {arg} is for plain models; {model_name} is hierarchical '
                                 f'(strides {reductions})')
            levels = [i for i, r in enumerate(reductions) if r >= 4]  # a stride-2 stem entry is no level
            self.take = tuple(levels[i] for i in self.out_indices)
            self.pyramid = None
            self.out_channels = [int(feature_info[i]['num_chs']) for i in self.take]
            units = [feature_info[i]['module'] for i in levels]
        model.prune_intermediate_layers(sorted(set(self.take)), prune_norm=True, prune_head=True)
        self.model = model

        spec = dense_spec(model_name)
        if out_norms is None:
            norm_levels = [i for i in self.out_indices if spec and i in spec.norm_levels]
        elif isinstance(out_norms, bool):
            norm_levels = list(self.out_indices) if out_norms else []
        else:
            norm_levels = [int(i) for i in out_norms]
            if not set(norm_levels) <= set(self.out_indices):
                raise ValueError(f'ZooBackbone: out_norms={tuple(out_norms)} names levels that are not returned '
                                 f'(out_indices={self.out_indices})')
        eps = spec.norm_eps if spec else 1e-5
        self.out_norms = nn.ModuleDict({
            str(level): LayerNorm2d(ch, eps=eps)
            for level, ch in zip(self.out_indices, self.out_channels) if level in norm_levels})

        # plain lists: these are the model's own modules, not registered twice
        self._stem, self._stem_params, self._units = _split_parameters(model, units)
        if not -1 <= frozen_stages <= len(units):
            kind = 'blocks' if self.plain else 'stages'
            raise ValueError(f'ZooBackbone: frozen_stages={frozen_stages} is out of range for {model_name}: -1 '
                             f'(nothing), 0 (the stem) to {len(units)} (the stem and all {len(units)} {kind})')
        if with_cp:
            self.model.set_grad_checkpointing(True)

        self.weights_source: Optional[str] = None
        if pretrained:
            self.load_pretrained(pretrained)
        self._register_load_state_dict_pre_hook(_convert_on_load, with_module=True)
        self._freeze()

    # --- weights ---------------------------------------------------------------------------------------------------

    def load_pretrained(self, pretrained: Union[bool, str]) -> None:
        """Load a tag, True (the default tag) or a file into the backbone (see the class docstring)."""
        path = resolve_pretrained(self.model_name, pretrained)
        state_dict = hub.load_checkpoint(path)
        converted = self.convert_state_dict(state_dict)
        missing, unexpected = self.load_state_dict(converted, strict=False)
        dense = any(k.startswith('out_norms.') for k in converted)
        # a classification checkpoint has no pyramid and no output norms: those keep their initialisation
        missing = [k for k in missing if not k.startswith('pyramid.') and (dense or not k.startswith('out_norms.'))]
        if missing:
            raise ValueError(f'ZooBackbone: {path} has no weights for {len(missing)} parameters of {self.model_name} '
                             f'(e.g. {missing[:3]}); is it a checkpoint of this model (and these out_norms)?')
        extra_norms = sorted({k.split('.')[1] for k in unexpected if k.startswith('out_norms.')})
        if extra_norms:
            raise ValueError(f'ZooBackbone: {path} has output norms for levels {", ".join(extra_norms)} that this '
                             f'backbone lacks; build it with out_norms=({", ".join(extra_norms)}, ...) to match')
        if unexpected:
            _logger.info(f'ZooBackbone: not used by the backbone ({len(unexpected)} entries, e.g. the classifier and '
                         f'pruned layers): {unexpected[:5]}')
        self.weights_source = str(path)
        _logger.info(f'ZooBackbone: {self.model_name} weights loaded from {path}')

    def convert_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """This module's keys for a state dict in any of the formats it accepts: its own (``model.``,
        ``out_norms.``, ``pyramid.``), a whole detector/segmentor (``backbone.`` + those), or the authors'
        classification or dense checkpoints (through the family's ``checkpoint_filter_fn``, output norms mapped
        from the family's keys)."""
        if any(k.startswith('backbone.') for k in state_dict):
            state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
        if any(k.startswith(('model.', 'out_norms.', 'pyramid.')) for k in state_dict):
            return dict(state_dict)
        spec = dense_spec(self.model_name)
        norms: Dict[str, torch.Tensor] = {}
        if spec is not None:
            pattern = spec.norm_key_pattern()
            for key in list(state_dict):
                match = pattern.match(key)
                if match:
                    norms[f'out_norms.{match[1]}.{match[2]}'] = state_dict.pop(key)
        filter_fn = checkpoint_filter_of(self.model_name)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, self.model)
        return {**{f'model.{k}': v for k, v in state_dict.items()}, **norms}

    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint; never re-initialise the model (timm models initialise themselves, and
        mmengine's recursive init would re-randomise loaded weights, e.g. through a ViT's own ``init_weights``)."""
        if self.init_cfg is not None and self.weights_source is None:
            self.load_pretrained(self.init_cfg.get('checkpoint', True))
        self._is_init = True

    # --- freezing --------------------------------------------------------------------------------------------------

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        for param in self._stem_params:
            param.requires_grad = False
        for module in [*self._stem, *self._units[:self.frozen_stages]]:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ZooBackbone':
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # --- forward ---------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        take = sorted(set(self.take))
        maps = dict(zip(take, self.model.forward_intermediates(x, indices=take, intermediates_only=True)))
        outs = [maps[i] for i in self.take]
        if self.pyramid is not None:
            outs = self.pyramid(outs)
        return tuple(self.out_norms[str(level)](out) if str(level) in self.out_norms else out
                     for level, out in zip(self.out_indices, outs))


def _split_parameters(model: nn.Module,
                      units: List[str]) -> Tuple[List[nn.Module], List[nn.Parameter], List[nn.Module]]:
    """The model's stem, i.e. what runs before its first unit (the top-level modules registered before it, and
    top-level parameters such as a ViT's cls token and position embedding), and its units (stages, or the blocks of
    a plain model)."""
    first_unit_top = units[0].split('.')[0]
    stem: List[nn.Module] = []
    for name, child in model.named_children():
        if name == first_unit_top:
            break
        stem.append(child)
    return stem, list(model.parameters(recurse=False)), [model.get_submodule(unit) for unit in units]


def _check_model_name(model_name: Any) -> None:
    if not isinstance(model_name, str) or not timm.is_model(model_name.split('.')[0]):
        import difflib
        zoo_names = timm.list_models('zoo_*')
        close = difflib.get_close_matches(str(model_name), zoo_names, n=3)
        hint = f'did you mean {", ".join(close)}? ' if close else ''
        raise ValueError(f"ZooBackbone: unknown model {model_name!r}; {hint}the zoo's models are "
                         f"timm.list_models('zoo_*') ({len(zoo_names)} names: {', '.join(zoo_names[:4])}, ...)")
    if '.' in model_name:
        raise ValueError(f'ZooBackbone: model_name {model_name!r} carries a pretrained tag; give the architecture '
                         f"as model_name and the tag as pretrained='{model_name.split('.', 1)[1]}'")


def _check_out_indices(model_name: str, out_indices: Sequence[int], plain_levels: Optional[int],
                       reductions: List[int]) -> Tuple[int, ...]:
    n = plain_levels or len([r for r in reductions if r >= 4])
    indices = tuple(int(i) for i in out_indices)
    bad = [i for i in indices if not 0 <= i < n]
    if bad or not indices or len(set(indices)) != len(indices) or list(indices) != sorted(indices):
        what = 'pyramid levels' if plain_levels else 'stages'
        raise ValueError(f'ZooBackbone: out_indices={tuple(out_indices)} for {model_name}, which has {n} {what} '
                         f'(strides {", ".join(str(4 * 2 ** i) for i in range(n)) if plain_levels else reductions}): '
                         f'give distinct increasing indices in 0..{n - 1}')
    return indices


def _plain_blocks(model_name: str, block_indices: Optional[Sequence[int]], depth: int) -> Tuple[int, ...]:
    if block_indices is None:
        return tuple(max(0, depth * (k + 1) // 4 - 1) for k in range(4))
    blocks = tuple(int(i) if i >= 0 else depth + int(i) for i in block_indices)
    if len(blocks) not in (1, 4) or not all(0 <= b < depth for b in blocks):
        raise ValueError(f'ZooBackbone: block_indices={tuple(block_indices)} for {model_name} ({depth} blocks): give '
                         f'four block indices (one per level) or one (all levels from it), each in 0..{depth - 1}')
    return blocks


def resolve_pretrained(model_name: str, pretrained: Union[bool, str]) -> str:
    """A local file for ``pretrained``: True (the default tag), a tag, or a path; tags through :mod:`zoo.hub`."""
    if isinstance(pretrained, (str, os.PathLike)) and (os.sep in str(pretrained) or os.path.isfile(pretrained)):
        if not os.path.isfile(pretrained):
            raise hub.WeightsNotFoundError(f'ZooBackbone: pretrained file {pretrained} does not exist')
        return str(pretrained)
    if pretrained is True:
        name = model_name
    elif isinstance(pretrained, str):
        name = pretrained if pretrained.startswith(model_name + '.') else f'{model_name}.{pretrained}'
        tags = timm.list_pretrained(model_name + '.*')
        if name not in tags:
            raise ValueError(f'ZooBackbone: {model_name} has no pretrained tag {pretrained!r}; its tags: '
                             f'{", ".join(t.split(".", 1)[1] for t in tags) or "none"} (or give a file)')
    else:
        raise TypeError(f'ZooBackbone: pretrained must be True, a tag or a file, got {pretrained!r}')
    cfg = resolve_pretrained_cfg(name).to_dict()
    return str(hub.resolve_weights(cfg))


def _convert_on_load(module: ZooBackbone, state_dict: Dict[str, Any], prefix: str, *args) -> None:
    """Lets mmengine's ``load_from`` (and ``load_state_dict``) take the authors' detection/segmentation checkpoints:
    their backbone keys, found under this module's prefix, are converted in place."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys or any(k[len(prefix):].startswith(('model.', 'out_norms.', 'pyramid.')) for k in keys):
        return
    theirs = {k[len(prefix):]: state_dict.pop(k) for k in keys}
    for key, value in module.convert_state_dict(theirs).items():
        state_dict[prefix + key] = value
    _logger.info(f'ZooBackbone: converted {len(keys)} {family_of(module.model_name)} backbone entries of the loaded '
                 f'checkpoint to the zoo layout')
