"""MambaOut: Do We Really Need Mamba for Vision? (Weihao Yu, Xinchao Wang, CVPR 2025)

Paper: https://arxiv.org/abs/2405.07992 (arXiv:2405.07992)
Original repository: https://github.com/yuweihao/MambaOut (Apache-2.0)
Weights: the authors' ImageNet-1k release (GitHub release ``model``) and timm's hosted copies of them
(``timm/mambaout_*.in1k``), both Apache-2.0.

MambaOut stacks Gated CNN blocks (a Mamba block without its SSM) in a four-stage hierarchy. timm already
implements it (``timm.models.mambaout``); the zoo registers the five paper variants under zoo names and
builds them from timm's class. Three things differ from timm's own registration:

* ``features_only`` goes through ``forward_intermediates`` (timm's ``FeatureGetterNet``), so feature maps
  are NCHW at strides 4/8/16/32; timm's default wraps the NHWC stages directly and returns NHWC maps.
* ``no_weight_decay``, which timm's class lacks.

Like timm's class, ``forward_features`` returns NHWC (``model.output_fmt == 'NHWC'``), which is what the
head takes.
"""
from typing import Set

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models import mambaout as _timm_mambaout

from zoo.hub import build_model_with_cfg

__all__ = ['MambaOut']


class MambaOut(_timm_mambaout.MambaOut):
    """timm's MambaOut with the zoo's full model contract."""

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # The only parameters to keep out of weight decay are norms and biases, all 1-D, which timm's
        # optimizer factory already exempts. (The authors' {'norm'} names no parameter and has no effect.)
        return set()


# timm's filter already unwraps 'model', passes timm-format state dicts through unchanged and renames the
# authors' keys (downsample_layers.0 -> stem, stages.i.j -> stages.i.blocks.j, downsample_layers.i ->
# stages.i.downsample, norm -> head.norm, head.fc1/norm/fc2 -> head.pre_logits.fc/pre_logits.norm/fc).
checkpoint_filter_fn = _timm_mambaout.checkpoint_filter_fn


def _create_mambaout(variant: str, pretrained: bool = False, **kwargs) -> MambaOut:
    return build_model_with_cfg(
        MambaOut, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        # The getter returns forward_intermediates' NCHW maps; timm's default (a FeatureListNet over the
        # stages) would return the stages' NHWC tensors.
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )


_RELEASE_URL = 'https://github.com/yuweihao/MambaOut/releases/download/model'


def _cfg(**kwargs):
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2405.07992',
        'paper_name': 'MambaOut: Do We Really Need Mamba for Vision?',
        'origin_url': 'https://github.com/yuweihao/MambaOut',
        **kwargs,
    }


# `.in1k` mirrors timm's cfgs for its hosted copies (test size 288 is timm's); `.official_in1k` mirrors the
# authors' cfgs (224, crop 1.0) for their release files, flat state dicts in the original key layout.
default_cfgs = generate_default_cfgs({
    'zoo_mambaout_femto.in1k': _cfg(hf_hub_id='timm/mambaout_femto.in1k', test_input_size=(3, 288, 288)),
    'zoo_mambaout_femto.official_in1k': _cfg(url=f'{_RELEASE_URL}/mambaout_femto.pth'),
    'zoo_mambaout_kobe.in1k': _cfg(hf_hub_id='timm/mambaout_kobe.in1k', test_input_size=(3, 288, 288)),
    'zoo_mambaout_kobe.official_in1k': _cfg(url=f'{_RELEASE_URL}/mambaout_kobe.pth'),
    'zoo_mambaout_tiny.in1k': _cfg(hf_hub_id='timm/mambaout_tiny.in1k', test_input_size=(3, 288, 288)),
    'zoo_mambaout_tiny.official_in1k': _cfg(url=f'{_RELEASE_URL}/mambaout_tiny.pth'),
    'zoo_mambaout_small.in1k': _cfg(hf_hub_id='timm/mambaout_small.in1k', test_input_size=(3, 288, 288)),
    'zoo_mambaout_small.official_in1k': _cfg(url=f'{_RELEASE_URL}/mambaout_small.pth'),
    'zoo_mambaout_base.in1k': _cfg(hf_hub_id='timm/mambaout_base.in1k', test_input_size=(3, 288, 288)),
    'zoo_mambaout_base.official_in1k': _cfg(url=f'{_RELEASE_URL}/mambaout_base.pth'),
})


@register_model
def zoo_mambaout_femto(pretrained: bool = False, **kwargs) -> MambaOut:
    model_args = dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288))
    return _create_mambaout('zoo_mambaout_femto', pretrained=pretrained, **dict(model_args, **kwargs))


# Kobe Memorial Version: femto's widths with 24 Gated CNN blocks
@register_model
def zoo_mambaout_kobe(pretrained: bool = False, **kwargs) -> MambaOut:
    model_args = dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288))
    return _create_mambaout('zoo_mambaout_kobe', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_mambaout_tiny(pretrained: bool = False, **kwargs) -> MambaOut:
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576))
    return _create_mambaout('zoo_mambaout_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_mambaout_small(pretrained: bool = False, **kwargs) -> MambaOut:
    model_args = dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576))
    return _create_mambaout('zoo_mambaout_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def zoo_mambaout_base(pretrained: bool = False, **kwargs) -> MambaOut:
    model_args = dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768))
    return _create_mambaout('zoo_mambaout_base', pretrained=pretrained, **dict(model_args, **kwargs))
