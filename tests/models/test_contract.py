"""timm's model contract, held for every registered zoo model.

Our port of timm's own model checks, parametrized over ``timm.list_models('zoo_*')``: every model a
later change registers is checked here without further ado. Inputs are small to keep CI fast; every
variant is built and run.

Every variant goes through the checks that need one build (forward, cfg, head, intermediates, odd sizes,
parameter groups). The checks that build further copies or run backward (reset/prune/features_only
rebuilds, backward, gradient checkpointing, in_chans=1, state-dict and pretrained-file round trips) run on
the variants up to ``LIGHT_PARAMS``: the heavier ones (up to 1.4 B parameters) share every code path with
a lighter sibling of their family and differ only in width, depth and window, and building them several
times over would not fit CI's 2 cores and 24 GiB. ``test_every_family_has_a_light_variant`` keeps that true.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg, group_parameters, model_entrypoint

import zoo

MODELS = timm.list_models('zoo_*')
BATCH = 2
SIZE = 64  # a multiple of every zoo model's largest stride; odd sizes are tested separately
ODD_SIZE = (97, 131)


LIGHT_PARAMS = 50e6


def _num_params(name: str) -> int:
    with torch.device('meta'):  # shapes only: no memory, no init cost
        return sum(p.numel() for p in timm.create_model(name).parameters())


LIGHT_MODELS = [name for name in MODELS if _num_params(name) <= LIGHT_PARAMS]


def create(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def test_registry():
    assert len(zoo.list_models('van_*')) >= 7
    assert len(zoo.list_models('zoo_mambaout_*')) >= 5
    assert zoo.list_models() == MODELS
    # The zoo never shadows a timm model: timm's own entrypoints and pretrained tags are intact.
    for timm_name in ('mambaout_femto', 'davit_tiny', 'maxvit_tiny_tf_224'):
        assert model_entrypoint(timm_name).__module__.startswith('timm.models.')
        assert timm.list_pretrained(timm_name + '.*')
    assert all(not name.startswith('zoo_') for name in timm.list_models(module='timm.models.*'))


def test_every_family_has_a_light_variant():
    families = {name.split('_')[1] for name in MODELS}
    assert families == {name.split('_')[1] for name in LIGHT_MODELS}


def input_for(model, size=SIZE, batch=BATCH):
    cfg = get_pretrained_cfg(model).to_dict() if isinstance(model, str) else model.pretrained_cfg
    in_chans = cfg['input_size'][0]
    return torch.randn(batch, in_chans, *((size, size) if isinstance(size, int) else size))


def is_plain(model) -> bool:
    """Isotropic models (ViT-like) give every intermediate at one stride; hierarchical ones at strides 4..32."""
    return len({info['reduction'] for info in model.feature_info}) == 1


def feature_hw(model, size):
    """The (H, W) of a feature map for an input of `size`: the patch grid of a plain model (its patch embedding
    says, for overlapping patches too), else the input size over the level's reduction, rounded up."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch_embed = getattr(model, 'patch_embed', None)
    if is_plain(model) and hasattr(patch_embed, 'dynamic_feat_size'):
        return tuple(patch_embed.dynamic_feat_size(size))
    reduction = model.feature_info[-1]['reduction']
    return tuple(math.ceil(s / reduction) for s in size)


def level_hw(model, info, size):
    size = (size, size) if isinstance(size, int) else tuple(size)
    if is_plain(model):
        return feature_hw(model, size)
    return tuple(math.ceil(s / info['reduction']) for s in size)


def head_width(model):
    """Width of the pooled pre-logits: num_features, or the head MLP's width where the head has one."""
    return getattr(model, 'head_hidden_size', None) or model.num_features


@pytest.fixture(scope='module', params=MODELS)
def model(request):
    """One eval-mode build per variant, shared by the read-only checks."""
    return create(request.param).eval()


@pytest.fixture(scope='module', params=LIGHT_MODELS)
def light_model(request):
    """One eval-mode build per light variant, for the checks that build further copies."""
    return create(request.param).eval()


@torch.no_grad()
def test_forward(model):
    out = model(input_for(model))
    assert out.shape == (BATCH, model.num_classes)
    assert torch.isfinite(out).all()


def test_default_cfg(model):
    cfg = model.pretrained_cfg
    name = cfg['architecture']
    assert name.startswith('zoo_')
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'num_classes', 'license', 'paper_ids'):
        assert cfg.get(key) is not None, f'{name}: pretrained cfg lacks {key!r}'
    assert len(cfg['input_size']) == 3 and len(cfg['mean']) == len(cfg['std']) == cfg['input_size'][0]
    assert cfg['num_classes'] == model.num_classes
    assert model.num_features == model.feature_info[-1]['num_chs']
    # pool_size is the final feature map at the cfg's input size
    assert tuple(cfg['pool_size']) == feature_hw(model, cfg['input_size'][1:])
    params = dict(model.named_parameters())
    first_convs = (cfg['first_conv'],) if isinstance(cfg['first_conv'], str) else cfg['first_conv']
    for conv in first_convs:
        assert params[conv + '.weight'].shape[1] == cfg['input_size'][0]
    classifier = params[cfg['classifier'] + '.weight']
    assert classifier.shape[0] == model.num_classes
    assert model.get_classifier() is model.get_submodule(cfg['classifier'])


def test_pretrained_tags_name_a_source():
    for tagged in timm.list_pretrained('zoo_*'):
        cfg = get_pretrained_cfg(tagged).to_dict()
        assert cfg.get('hf_hub_id') or cfg.get('url'), f'{tagged} names no weight source'
        assert cfg['license'] and cfg['paper_ids'] and cfg.get('origin_url'), tagged


@torch.no_grad()
def test_reset_classifier(light_model):
    model = light_model
    model = create(model.pretrained_cfg['architecture']).eval()
    x = input_for(model)
    model.reset_classifier(0)
    assert model(x).shape == (BATCH, head_width(model))
    model.reset_classifier(0, '')
    out = model(x)
    if is_plain(model) and out.ndim == 3:  # the tokens, (B, L, C), as timm's ViTs
        assert out.shape[-1] == head_width(model)
    else:  # a map (plain models may give their patch grid as one, LookupViT does)
        channel_dim = -1 if getattr(model, 'output_fmt', 'NCHW') == 'NHWC' else 1
        assert out.ndim == 4 and out.shape[channel_dim] == head_width(model)
    model.reset_classifier(7, 'avg')
    assert model(x).shape == (BATCH, 7)


@torch.no_grad()
def test_forward_head_pre_logits(model):
    x = input_for(model)
    features = model.forward_features(x)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (BATCH, head_width(model))
    torch.testing.assert_close(model.forward_head(features), model(x))


@torch.no_grad()
def test_forward_intermediates(model):
    x = input_for(model)
    final, intermediates = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(intermediates) == len(model.feature_info)
    for feat, info in zip(intermediates, model.feature_info):
        assert feat.shape == (BATCH, info['num_chs'], *level_hw(model, info, SIZE))
    only = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert len(only) == 2
    torch.testing.assert_close(only[1], intermediates[2])


@torch.no_grad()
def test_prune_intermediate_layers(light_model):
    model = light_model
    name = model.pretrained_cfg['architecture']
    x = input_for(model)
    _, full = model.forward_intermediates(x)
    pruned = create(name).eval()
    pruned.prune_intermediate_layers(indices=2, prune_head=True)
    kept = pruned.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(kept) == 2
    for a, b in zip(kept, full[-2:]):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_features_only(light_model):
    model = light_model
    name = model.pretrained_cfg['architecture']
    backbone = create(name, features_only=True).eval()
    x = input_for(model)
    features = backbone(x)
    info = backbone.feature_info
    assert len(features) == len(info.out_indices) == 4
    if is_plain(model):  # stride-16 (or 8) intermediates of four blocks; zoo.mm builds the pyramid
        assert len(set(info.reduction())) == 1
    else:
        assert info.reduction() == [4, 8, 16, 32]
    for feat, channels, level in zip(features, info.channels(), info.get_dicts()):
        assert feat.shape == (BATCH, channels, *level_hw(model, level, SIZE)), 'features are NCHW'
    intermediates = model.forward_intermediates(x, indices=list(info.out_indices), intermediates_only=True)
    for feat, expected in zip(features, intermediates):
        torch.testing.assert_close(feat, expected)

    subset = create(name, features_only=True, out_indices=tuple(info.out_indices)[1::2]).eval()
    assert subset.feature_info.reduction() == info.reduction()[1::2]
    for feat, expected in zip(subset(x), features[1::2]):
        torch.testing.assert_close(feat, expected)


@pytest.mark.parametrize('name', LIGHT_MODELS)
def test_backward(name):
    model = create(name, num_classes=42)
    model.train()
    out = model(input_for(model))
    assert out.shape == (BATCH, 42)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without gradient: {missing[:5]}'


@pytest.mark.parametrize('name', LIGHT_MODELS)
def test_grad_checkpointing_keeps_outputs_and_gradients(name):
    x = input_for(name)

    def run(checkpointing):
        model = create(name, drop_path_rate=0.0).train()
        model.set_grad_checkpointing(checkpointing)
        out = model(x)
        out.sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run(False)
    out_cp, grads_cp = run(True)
    torch.testing.assert_close(out_cp, out)
    assert grads_cp.keys() == grads.keys()
    for n in grads:
        torch.testing.assert_close(grads_cp[n], grads[n], rtol=1e-4, atol=1e-5, msg=n)


@torch.no_grad()
def test_odd_input_size(model):
    """Any size the downstream world sends works, or is refused with a ValueError naming the constraint."""
    x = input_for(model, ODD_SIZE, batch=1)
    try:
        out = model(x)
    except ValueError as e:
        assert any(ch.isdigit() for ch in str(e)), f'the error must state the constraint: {e}'
        return
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    _, intermediates = model.forward_intermediates(x)
    for feat, info in zip(intermediates, model.feature_info):
        assert tuple(feat.shape[-2:]) == level_hw(model, info, ODD_SIZE)


@pytest.mark.parametrize('name', LIGHT_MODELS)
@torch.no_grad()
def test_in_chans_1(name):
    model = create(name, in_chans=1).eval()
    out = model(torch.randn(1, 1, SIZE, SIZE))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


def test_group_matcher_and_no_weight_decay(model):
    """Layer-wise LR decay needs every parameter in one group, stem first and classifier last."""
    names = [n for n, _ in model.named_parameters()]
    cfg = model.pretrained_cfg
    first_conv = cfg['first_conv'] if isinstance(cfg['first_conv'], str) else cfg['first_conv'][0]
    for coarse in (True, False):
        groups = list(group_parameters(model, model.group_matcher(coarse=coarse)).values())
        grouped = [n for group in groups for n in group]
        assert sorted(grouped) == sorted(names), 'each parameter in exactly one group'
        assert len(groups) > 2
        assert first_conv + '.weight' in groups[0]
        assert cfg['classifier'] + '.weight' in groups[-1]
    fine = len(group_parameters(model, model.group_matcher(coarse=False)))
    assert fine >= len(group_parameters(model, model.group_matcher(coarse=True)))
    no_wd = model.no_weight_decay()
    assert isinstance(no_wd, (set, frozenset, list, tuple))
    for key in no_wd:
        assert any(n == key or n.startswith(key + '.') or key in n for n in names), f'{key} names no parameter'


@torch.no_grad()
def test_state_dict_round_trip_and_pretrained_file(light_model, tmp_path):
    source, name = light_model, light_model.pretrained_cfg['architecture']
    x = input_for(source)
    expected = source(x)
    torch.manual_seed(1)
    copy = timm.create_model(name).eval()
    copy.load_state_dict(source.state_dict())
    torch.testing.assert_close(copy(x), expected)

    path = tmp_path / 'weights.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    torch.testing.assert_close(loaded(x), expected)
    features = timm.create_model(
        name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    intermediates = source.forward_intermediates(
        x, indices=list(features.feature_info.out_indices), intermediates_only=True)
    for feat, ref in zip(features(x), intermediates):
        torch.testing.assert_close(feat, ref)


def _autocast_cases():
    """(device, dtype) of the mixed-precision checks: bfloat16 on the CPU; float16 and bfloat16 on CUDA where there
    is a GPU."""
    cases = [('cpu', torch.bfloat16)]
    if torch.cuda.is_available():
        cases += [('cuda', torch.float16), ('cuda', torch.bfloat16)]
    return cases


@pytest.mark.parametrize('name', LIGHT_MODELS)
def test_trains_a_step_under_autocast(name):
    """AMP training (on in the ImageNet base schedule): one optimizer step under torch.autocast with a finite loss,
    a finite gradient for every parameter and finite parameters after the step."""
    for device, dtype in _autocast_cases():
        model = create(name, num_classes=42).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x = input_for(model).to(device)
        with torch.autocast(device, dtype=dtype):
            out = model(x)
        assert out.shape == (BATCH, 42)
        loss = F.cross_entropy(out.float(), torch.arange(BATCH, device=device))
        loss.backward()
        assert torch.isfinite(loss), f'{device} {dtype}: loss {loss.item()}'
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f'{device} {dtype}: parameters without gradient: {missing[:5]}'
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f'{device} {dtype}: non-finite gradients: {bad[:5]}'
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())


@torch.no_grad()
def test_empty_batch_gives_empty_outputs(model):
    """A batch of 0 images gives 0 logits and 0-batch feature maps (the kernels return empty results for empty
    inputs; a dataloader's last batch or a detector's empty proposal set send them)."""
    x = input_for(model, batch=0)
    assert model(x).shape == (0, model.num_classes)
    _, intermediates = model.forward_intermediates(x)
    for feat, info in zip(intermediates, model.feature_info):
        assert feat.shape == (0, info['num_chs'], *level_hw(model, info, SIZE))
