"""ZooBackbone: levels, the plain-model pyramid, freezing, weights in every accepted format (the authors' dense
checkpoints included, BiFormer's against their backbone's outputs), errors."""
import gzip
import json

import pytest
import timm
import torch
import torch.nn as nn

from tests.parity import FIXTURES, assert_rel_close, load_parity_fixture, original_key_shapes
from zoo import hub
from zoo.mm import ZooBackbone
from zoo.mm.families import DENSE_SPECS, family_of

pytestmark = pytest.mark.mm

VIT = dict(model_name='vit_tiny_patch16_224', depth=4, dynamic_img_size=True)  # a plain timm model, 4 blocks


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch):
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)


def small_litv2(**kwargs):
    return ZooBackbone('zoo_litv2_small', depths=(1, 1, 1, 1), **kwargs)


# --- levels ---------------------------------------------------------------------------------------------------------

_SIZES = ('femto', 'kobe', 'micro', 'b0', 'xxs', 'tiny', 'xs', 'small', 's16', 'b1')


def smallest_variant(family: str) -> str:
    names = timm.list_models(f'zoo_{family}_*')
    return min(names, key=lambda n: (next((i for i, s in enumerate(_SIZES) if f'_{s}' in n), len(_SIZES)), n))


@pytest.mark.parametrize('family', sorted({n.split('_')[1] for n in timm.list_models('zoo_*')}))
def test_every_family_gives_four_levels_at_strides_4_to_32(family):
    """A small variant of every registered family, hierarchical or plain, at an odd size: a family registered later
    is picked up here with no adapter code."""
    name = smallest_variant(family)
    backbone = ZooBackbone(name, **({'depths': (1, 1, 1, 1)} if family == 'transnext' else {})).eval()
    x = torch.randn(1, 3, 70, 99)
    with torch.no_grad():
        outs = backbone(x)
    assert len(outs) == 4
    h16, w16 = outs[2].shape[-2:]  # a plain model's own maps (it may pad the image to its patch size)
    assert abs(h16 - 70 / 16) <= 1 and abs(w16 - 99 / 16) <= 1
    for level, (out, channels) in enumerate(zip(outs, backbone.out_channels)):
        stride = 4 * 2 ** level
        assert out.shape[:2] == (1, channels)
        if backbone.plain:
            assert out.shape[-2:] == (h16 * 16 // stride, w16 * 16 // stride), (level, out.shape)
        else:
            assert abs(out.shape[2] - 70 / stride) <= 1 and abs(out.shape[3] - 99 / stride) <= 1, (level, out.shape)


def test_out_indices_subset_and_channels():
    backbone = small_litv2(out_indices=(1, 3)).eval()
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 8, 8), (1, 768, 2, 2)]
    assert backbone.out_channels == [192, 768]
    assert sorted(backbone.out_norms) == ['1', '3']  # LITv2's detection backbone norms levels 1-3


def test_plain_model_pyramid():
    backbone = ZooBackbone(**VIT).eval()
    assert backbone.plain and backbone.take == (0, 1, 2, 3)  # the last block of each quarter of 4 blocks
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 192, 16, 24), (2, 192, 8, 12), (2, 192, 4, 6), (2, 192, 2, 3)]
    # level 2 (stride 16) is the block output itself
    with torch.no_grad():
        ref = backbone.model.forward_intermediates(torch.randn(2, 3, 64, 96), indices=[2], intermediates_only=True)
    assert ref[0].shape == outs[2].shape


def test_plain_model_from_one_block_and_unchanged_stride_16_level():
    backbone = ZooBackbone(**VIT, block_indices=(-1,), out_indices=(1, 2, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = backbone(x)
        last = backbone.model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    assert backbone.take == (3, 3, 3)
    torch.testing.assert_close(outs[1], last)
    torch.testing.assert_close(outs[2], nn.functional.max_pool2d(last, 2))
    assert outs[0].shape[-1] == 8


def test_default_blocks_of_shallow_plain_models():
    assert ZooBackbone(**dict(VIT, depth=2)).take == (0, 0, 0, 1)
    assert ZooBackbone(**dict(VIT, depth=12)).take == (2, 5, 8, 11)


def test_vim_taps_are_the_authors_segmentation_taps():
    """Vim's segmentation backbone takes the mixer outputs (use_residual_as_feature=False) of blocks 5, 11, 17, 23: the
    adapter's default blocks for 24, through the BEiT-style pyramid with BatchNorm their fpn1 has."""
    backbone = ZooBackbone('zoo_vim_tiny', pyramid_norm='BN').eval()
    assert backbone.take == (5, 11, 17, 23)
    assert isinstance(backbone.pyramid.scales['0'][1], nn.BatchNorm2d)
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        outs = backbone(x)
        mixer, stream = (backbone.model.forward_intermediates(x, indices=[17], norm=norm, intermediates_only=True)[0]
                         for norm in (False, True))
    torch.testing.assert_close(outs[2], mixer)  # level 2 (stride 16) is block 17's map itself
    assert not torch.allclose(outs[2], stream)


def test_plain_decision_comes_from_feature_info():
    """A family registered later needs no adapter code: one stride for all feature_info entries means plain."""
    assert not ZooBackbone('zoo_van_b0').plain
    assert ZooBackbone(**VIT).plain


# --- freezing, norm_eval, checkpointing ----------------------------------------------------------------------------

def test_frozen_stages_hierarchical():
    backbone = small_litv2(frozen_stages=2)
    backbone.train()
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(('model.stem.', 'model.stages.0.', 'model.stages.1.')) for n in frozen)
    assert {n for n, _ in backbone.named_parameters() if n.startswith('model.stages.1.')} <= frozen
    assert not backbone.model.stages[1].training and backbone.model.stages[2].training
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith('model.stages.2.'))


def test_frozen_stages_plain_freezes_embeddings_and_blocks():
    backbone = ZooBackbone(**VIT, frozen_stages=1)
    backbone.train()
    assert not backbone.model.cls_token.requires_grad and not backbone.model.pos_embed.requires_grad
    assert not any(p.requires_grad for p in backbone.model.patch_embed.parameters())
    assert not any(p.requires_grad for p in backbone.model.blocks[0].parameters())
    assert all(p.requires_grad for p in backbone.model.blocks[1].parameters())
    assert all(p.requires_grad for p in backbone.pyramid.parameters())


def test_frozen_stage_has_no_gradient_after_a_step():
    backbone = small_litv2(frozen_stages=1).train()
    sum(o.mean() for o in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for p in backbone.model.stages[0].parameters())
    assert any(p.grad is not None for p in backbone.model.stages[1].parameters())


def test_norm_eval_keeps_batchnorm_statistics():
    backbone = small_litv2(norm_eval=True).train()  # LITv2's token merging has BatchNorm
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = small_litv2().train()
    checkpointed = small_litv2(with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for backbone in (plain, checkpointed):
        backbone.zero_grad()
        sum(o.square().mean() for o in backbone(x)).backward()
        grads.append(backbone.model.stages[2].blocks[0].mlp.fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# --- weights --------------------------------------------------------------------------------------------------------

def _classification_checkpoint(path, model_name='zoo_van_b0'):
    model = timm.create_model(model_name)
    torch.save({'state_dict': model.state_dict()}, path)
    return model


def test_pretrained_file_and_model_kwargs(tmp_path):
    source = _classification_checkpoint(tmp_path / 'van.pth')
    backbone = ZooBackbone('zoo_van_b0', pretrained=str(tmp_path / 'van.pth'), drop_path_rate=0.1)
    assert backbone.weights_source == str(tmp_path / 'van.pth')
    torch.testing.assert_close(backbone.model.stages[3].norm.weight, source.stages[3].norm.weight)


def test_pretrained_tag_through_the_local_mirror(tmp_path, monkeypatch):
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg('zoo_van_b0.official_in1k').to_dict()
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    path = hub.mirror_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = timm.create_model('zoo_van_b0')
    torch.save(source.state_dict(), path)
    monkeypatch.setattr(hub, '_SHA256', {})
    for pretrained in ('official_in1k', 'zoo_van_b0.official_in1k', True):
        backbone = ZooBackbone('zoo_van_b0', pretrained=pretrained)
        assert backbone.weights_source == str(path)
        torch.testing.assert_close(backbone.model.stem.proj.weight, source.stem.proj.weight)


def _authors_dense_checkpoint(path, family, variant, levels):
    """An authors'-layout detector checkpoint: the classification keys under `backbone.`, their per-level output
    norms, and a neck."""
    torch.manual_seed(0)
    shapes = original_key_shapes(family)[variant]
    spec = DENSE_SPECS[family]
    backbone = {k: torch.randn(s) for k, s in shapes.items() if not k.startswith('head')}
    widths = {i: shapes[next(k for k in shapes if k.endswith('head.weight'))][1] // 2 ** (3 - i) for i in range(4)}
    for i in levels:
        for p in ('weight', 'bias'):
            backbone[spec.norm_key.format(i=i) + f'.{p}'] = torch.randn(widths[i])
    state = {f'backbone.{k}': v for k, v in backbone.items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 4, 1, 1)
    torch.save({'meta': {'CLASSES': ('a', 'b')}, 'state_dict': state}, path)
    return state


@pytest.mark.parametrize('model_name,variant,levels,out_norms', [
    ('zoo_litv2_small', 'litv2_small', (1, 2, 3), None),  # the authors' detection backbone
    ('zoo_litv2_small', 'litv2_small', (0, 1, 2, 3), (0, 1, 2, 3)),  # ... and segmentation backbone
    ('zoo_davit_tiny', 'davit_tiny', (0, 1, 2, 3), None),  # DaViT's (Microsoft's key layout)
])
def test_authors_dense_checkpoint_loads_with_its_output_norms(tmp_path, model_name, variant, levels, out_norms):
    family = family_of(model_name)
    state = _authors_dense_checkpoint(tmp_path / 'det.pth', family, variant, levels)
    backbone = ZooBackbone(model_name, pretrained=str(tmp_path / 'det.pth'), out_norms=out_norms)
    assert sorted(backbone.out_norms) == [str(i) for i in levels]
    for i in levels:
        torch.testing.assert_close(backbone.out_norms[str(i)].weight, state[f'backbone.norm{i}.weight'])
    # every parameter was loaded (load_pretrained refuses a file that misses any); spot-check the stem
    stem = next(k for k in state if k.startswith(('backbone.patch_embed.', 'backbone.patch_embeds.0.')) and
                k.endswith('proj.weight'))
    ours = backbone.model.stem.proj if family == 'litv2' else backbone.model.stem.conv
    torch.testing.assert_close(ours.weight, state[stem])


def _biformer_dense_checkpoint(path):
    """The authors' mmdet checkpoint of the BiFormer parity fixtures' backbone, as mmcv saves it: {'meta', 'state_dict'}
    with the classification weights less the final norm and head (which their BiFormer_mm deletes) under `backbone.`,
    their `backbone.extra_norms.{0..3}` and neck/head keys. The fixture holds what their backbone (n_win 16, auto_pad)
    returns for it at 96x160, a size their auto_pad pads in stages 1-3."""
    cls, det = load_parity_fixture('biformer_parity'), load_parity_fixture('biformer_det_padded')
    state = {f'backbone.{k}': v for k, v in cls.state_dict.items() if not k.startswith(('norm.', 'head.'))}
    state.update(det.state_dict)
    torch.save({'meta': {'mmdet_version': '2.28.2', 'CLASSES': ('person',)}, 'state_dict': state}, path)
    return det


@pytest.mark.parametrize('how', ['pretrained', 'load_from'])
@torch.no_grad()
def test_biformer_authors_dense_checkpoint_gives_their_backbone_outputs(tmp_path, how):
    """Their extra_norms (timm LayerNorm2d, eps 1e-6) become out_norms on all four levels, and the four outputs are
    their backbone's (stage output, then extra norm), through `pretrained=` and through mmengine's `load_from`."""
    from mmengine.runner.checkpoint import load_checkpoint
    from safetensors import safe_open

    det = _biformer_dense_checkpoint(tmp_path / 'maskrcnn_biformer.pth')
    if how == 'pretrained':
        backbone = ZooBackbone(det.model_name, pretrained=str(tmp_path / 'maskrcnn_biformer.pth'), **det.model_kwargs)
    else:
        detector = nn.Module()
        detector.backbone = backbone = ZooBackbone(det.model_name, **det.model_kwargs)
        load_checkpoint(detector, str(tmp_path / 'maskrcnn_biformer.pth'), map_location='cpu')
    assert sorted(backbone.out_norms) == ['0', '1', '2', '3']
    assert all(norm.eps == 1e-6 for norm in backbone.out_norms.values())
    with safe_open(FIXTURES / 'biformer_det_padded.safetensors', framework='pt') as f:
        expected = [f.get_tensor(f'normed.{i}') for i in range(4)]
    outs = backbone.eval()(det.input.float())
    for i, (out, ref) in enumerate(zip(outs, expected)):
        assert_rel_close(out, ref, msg=f'level {i}')


def test_biformer_classification_checkpoint_loads_and_keeps_fresh_output_norms(tmp_path):
    """The authors' ImageNet file ({'model': state_dict}, final BatchNorm and head included) is a backbone start: every
    backbone parameter is loaded, the output norms (which it lacks) keep LayerNorm's initial ones."""
    cls = load_parity_fixture('biformer_parity')
    path = cls.save_original_checkpoint(tmp_path / 'biformer_cls.pth')
    kwargs = {k: v for k, v in cls.model_kwargs.items() if k != 'num_classes'}
    backbone = ZooBackbone(cls.model_name, pretrained=str(path), **kwargs)
    torch.testing.assert_close(backbone.model.stages[3].blocks[0].attn.qkv.weight,
                               cls.state_dict['stages.3.0.attn.qkv.weight'])
    assert all(torch.equal(norm.weight, torch.ones_like(norm.weight)) for norm in backbone.out_norms.values())


def test_biformer_small_dense_checkpoint_layout_loads_completely(tmp_path):
    """Every key of the authors' BiFormer-S COCO backbone (their state_dict's `backbone.*`, key -> shape) has its place:
    load_pretrained refuses a file that leaves any parameter of the backbone without weights."""
    with gzip.open(FIXTURES / 'biformer_original_keys.json.gz', 'rt') as f:
        shapes = json.load(f)['dense']['biformer_small']
    torch.manual_seed(0)
    state = {k: torch.randn(s) if s else torch.tensor(1) for k, s in shapes.items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(256, 64, 1, 1)
    torch.save({'meta': {'CLASSES': ('person',)}, 'state_dict': state}, tmp_path / 'maskrcnn_biformer_small.pth')
    backbone = ZooBackbone('zoo_biformer_small', n_win=16, pretrained=str(tmp_path / 'maskrcnn_biformer_small.pth'))
    torch.testing.assert_close(backbone.out_norms['3'].weight, state['backbone.extra_norms.3.weight'])
    torch.testing.assert_close(backbone.model.stages[2].blocks[17].attn.qkv.weight,
                               state['backbone.stages.2.17.attn.qkv.qkv.weight'])
    torch.testing.assert_close(backbone.model.stem.norm2.running_var,
                               state['backbone.downsample_layers.0.4.running_var'])


def test_authors_dense_checkpoint_with_norms_the_backbone_lacks_is_refused(tmp_path):
    _authors_dense_checkpoint(tmp_path / 'seg.pth', 'litv2', 'litv2_small', (0, 1, 2, 3))
    with pytest.raises(ValueError, match=r'output norms for levels 0 .*out_norms=\(0'):
        ZooBackbone('zoo_litv2_small', pretrained=str(tmp_path / 'seg.pth'))


def test_mmengine_load_from_converts_the_authors_detector_checkpoint(tmp_path):
    """`load_from` with the authors' whole-detector checkpoint: the backbone keys are converted on load."""
    from mmengine.runner.checkpoint import load_checkpoint
    state = _authors_dense_checkpoint(tmp_path / 'det.pth', 'litv2', 'litv2_small', (1, 2, 3))
    detector = nn.Module()
    detector.backbone = ZooBackbone('zoo_litv2_small')
    load_checkpoint(detector, str(tmp_path / 'det.pth'), map_location='cpu')
    torch.testing.assert_close(detector.backbone.out_norms['2'].bias, state['backbone.norm2.bias'])
    torch.testing.assert_close(detector.backbone.model.stages[3].downsample.norm.running_var,
                               state['backbone.layers.2.downsample.norm_layer.running_var'])


def test_init_cfg_pretrained_is_never_reinitialised(tmp_path):
    """A timm ViT has its own init_weights(); mmengine's recursive init must not reach it after loading."""
    model = timm.create_model(VIT['model_name'], depth=4)
    torch.save(model.state_dict(), tmp_path / 'vit.pth')
    backbone = ZooBackbone(**VIT, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'vit.pth')))
    detector = nn.Module()
    from mmengine.model import BaseModule

    class Detector(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type='Normal', layer='Linear', std=1.0))
            self.backbone = backbone
            self.head = nn.Linear(2, 2)

    detector = Detector()
    detector.init_weights()
    torch.testing.assert_close(backbone.model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(backbone.model.pos_embed, model.pos_embed)
    assert backbone.weights_source == str(tmp_path / 'vit.pth')


# --- errors: one clear line each ---------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs,message', [
    (dict(model_name='zoo_vann_b0'), r"unknown model 'zoo_vann_b0'; did you mean zoo_van_b0"),
    (dict(model_name='zoo_van_b0', out_indices=(0, 4)), r'out_indices=\(0, 4\) for zoo_van_b0, which has 4 stages'),
    (dict(model_name='zoo_van_b0', frozen_stages=5), r'frozen_stages=5 is out of range for zoo_van_b0: -1'),
    (dict(model_name='zoo_van_b0', frozen_stages=-2), r'frozen_stages=-2 is out of range'),
    (dict(**VIT, out_indices=(4,)), r'which has 4 pyramid levels'),
    (dict(**VIT, block_indices=(0, 1)), r'block_indices=\(0, 1\) for vit_tiny_patch16_224 \(4 blocks\)'),
    (dict(model_name='zoo_van_b0', pretrained='in22k'), r"zoo_van_b0 has no pretrained tag 'in22k'; its tags: "),
    (dict(model_name='zoo_van_b0.official_in1k'), r"carries a pretrained tag; .*pretrained='official_in1k'"),
    (dict(model_name='zoo_van_b0', init_cfg=dict(type='Normal')), r"init_cfg must be dict\(type='Pretrained'"),
    (dict(**VIT, pyramid_norm='GN'), r"pyramid_norm='GN'; give one of \('LN', 'BN'\)"),
    (dict(model_name='zoo_van_b0', pyramid_norm='BN'), r'pyramid_norm is for plain models; zoo_van_b0 is hierarchical'),
    (dict(model_name='zoo_vim_tiny', frozen_stages=25), r'frozen_stages=25 is out of range for zoo_vim_tiny: .* to 24'),
    (dict(model_name='zoo_vim_tiny', block_indices=(5, 11, 17, 24)), r'block_indices=\(5, 11, 17, 24\) for zoo_vim_t'),
    (dict(model_name='zoo_biformer_tiny', n_win=1), r'topk must be in \[1, n_win\*\*2\] = \[1, 1\] for n_win 1'),
])
def test_bad_input_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        ZooBackbone(**kwargs)
    assert '\n' not in str(info.value)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(hub.WeightsNotFoundError, match='does not exist'):
        ZooBackbone('zoo_van_b0', pretrained=str(tmp_path / 'missing.pth'))
