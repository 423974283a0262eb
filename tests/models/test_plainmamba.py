"""PlainMamba: parity with the original implementation, its released-weight quirks, and its checkpoints.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is PlainMamba's.
Fixtures (made by running ChenhongyiYang/PlainMamba's own model code on the CPU with mamba's selective_scan_ref in
place of the CUDA scan; see their `source`):
  plainmamba_parity.safetensors     a small PlainMamba (3 blocks, dwconv after blocks 0 and 2, two stem convs) with
                                    trained-looking random weights in the mmcls layout; inputs at the native grid
                                    (``input``), at a resized grid (``input.wide``) and at a padded odd size
                                    (``input.odd``) with their logits and every block's output (``features*.N``,
                                    NCHW); the gradients of ``(logits * grad.loss_weight).sum()`` at ``input``; and
                                    the scan tables of the original ``get_permute_order`` (``tables.HxW.*``);
  plainmamba_original_keys.json.gz  the original checkpoint's key -> shape for L1, L2, L3.
"""
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

from kernels import selective_scan, use_backend
from tests.parity import (
    FIXTURES,
    assert_original_keys_map_exactly,
    assert_rel_close,
    load_parity_fixture,
    original_key_shapes,
)
from zoo.hub import CorruptWeightsError
from zoo.models.plainmamba import PlainMamba, PlainMambaMixer, _rename_original_key, checkpoint_filter_fn, scan_tables

INPUTS = ('', '.wide', '.odd')


@pytest.fixture(scope='module')
def fixture():
    return load_parity_fixture('plainmamba_parity')


@pytest.fixture(scope='module')
def tensors():
    with safe_open(FIXTURES / 'plainmamba_parity.safetensors', framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys() if not k.startswith('ckpt.')}


@pytest.fixture(scope='module')
def original_file(fixture, tmp_path_factory):
    return fixture.save_original_checkpoint(tmp_path_factory.mktemp('plainmamba') / 'l1_like.pth')


def create_from(fixture, path, **kwargs):
    """The fixture's model with the original-format file as its pretrained weights."""
    kwargs = dict(fixture.model_kwargs, **kwargs)
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    return timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


@pytest.fixture(scope='module')
def model(fixture, original_file):
    return create_from(fixture, original_file)


@pytest.mark.parametrize('which', INPUTS)
@torch.no_grad()
def test_parity_with_original_checkpoint(model, tensors, which):
    """Native grid, a resized position embedding (5x7 from 4x4) and an odd size padded at the corner (7x5)."""
    assert_rel_close(model(tensors['input' + which]), tensors['output' + which], msg=f'logits{which}')


@pytest.mark.parametrize('which', INPUTS)
@torch.no_grad()
def test_intermediates_are_the_original_block_outputs(model, tensors, which):
    x = tensors['input' + which]
    final, intermediates = model.forward_intermediates(x)
    assert len(intermediates) == 3
    for i, feat in enumerate(intermediates):
        assert_rel_close(feat, tensors[f'features{which}.{i}'], msg=f'block {i}')
    torch.testing.assert_close(final, model.forward_features(x))
    tokens = model.forward_intermediates(x, indices=[1], output_fmt='NLC', intermediates_only=True)
    torch.testing.assert_close(tokens[0], intermediates[1].flatten(2).transpose(1, 2))
    normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0].flatten(2).transpose(1, 2), final)


@torch.no_grad()
def test_features_only(fixture, original_file, tensors):
    x = tensors['input.odd']
    backbone = create_from(fixture, original_file, features_only=True)
    assert backbone.feature_info.reduction() == [16, 16, 16]
    for i, feat in enumerate(backbone(x)):
        assert_rel_close(feat, tensors[f'features.odd.{i}'], msg=f'block {i}')
    subset = create_from(fixture, original_file, features_only=True, out_indices=(1,))
    assert len(subset.model.blocks) == 2, 'blocks after the last index taken are pruned'
    (feat,) = subset(x)
    assert_rel_close(feat, tensors['features.odd.1'])


@pytest.mark.parametrize('name, expected', [
    ('zoo_plainmamba_l1', (5, 11, 17, 23)), ('zoo_plainmamba_l2', (5, 11, 17, 23)),
    ('zoo_plainmamba_l3', (8, 17, 26, 35))])
def test_features_default_to_the_authors_dense_indices(name, expected):
    with torch.device('meta'):
        backbone = timm.create_model(name, features_only=True)
    assert tuple(backbone.feature_info.out_indices) == expected
    assert backbone.feature_info.reduction() == [16] * 4


def test_gradients_match_original(model, fixture, tensors):
    x = tensors['input'].clone().requires_grad_()
    (model(x) * tensors['grad.loss_weight']).sum().backward()
    try:
        assert_rel_close(x.grad, tensors['grad.input'], msg='input grad')
        params = dict(model.named_parameters())
        expected = {_rename_original_key(k[len('grad.ckpt.'):]): v for k, v in tensors.items()
                    if k.startswith('grad.ckpt.')}
        assert len(expected) > 30
        for name, grad in expected.items():
            assert_rel_close(params[name].grad, grad, msg=name)
    finally:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize('shape', ['1x1', '1x5', '5x1', '2x3', '4x4', '5x7', '6x3', '7x5'])
def test_scan_tables_match_original(tensors, shape):
    """Orders (start corners included) and arrival directions as the original get_permute_order."""
    H, W = map(int, shape.split('x'))
    orders, step_dirs, pos_dirs = scan_tables(H, W, torch.device('cpu'))
    torch.testing.assert_close(orders, tensors[f'tables.{shape}.orders'], rtol=0, atol=0)
    torch.testing.assert_close(step_dirs, tensors[f'tables.{shape}.directions'], rtol=0, atol=0)
    for k in range(4):
        assert torch.equal(pos_dirs[k, orders[k]], step_dirs[k])


def test_scan_tables_are_cached_per_shape():
    a = scan_tables(5, 7, torch.device('cpu'))
    assert all(x is y for x, y in zip(a, scan_tables(5, 7, torch.device('cpu'))))
    assert scan_tables(7, 5, torch.device('cpu'))[0] is not a[0]
    with torch.inference_mode():
        fresh = scan_tables(3, 11, torch.device('cpu'))
    assert not any(t.is_inference() for t in fresh), 'tables made under inference_mode must work with autograd too'


def _explicit_mixer(mixer: PlainMambaMixer, x: torch.Tensor, released: bool) -> torch.Tensor:
    """The mixer as four separate single-order scans on gathered copies (the slow, obvious formulation).

    released: u in scan order, delta/B/C at the step index (raster), the offset of step t added to the B of index
    t, dt_proj's bias twice. Otherwise (the paper): u, delta, B, C all in scan order, the offset of step t added to
    the B the scan visits at step t, the bias once.
    """
    b, H, W, _ = x.shape
    u, z = mixer.in_proj(x).chunk(2, dim=-1)
    u = F.silu(mixer.conv2d(u.permute(0, 3, 1, 2))).flatten(2)
    dt, B, C = mixer.x_proj(u.transpose(1, 2)).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta, B, C = mixer.dt_proj(dt).transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)
    A = -torch.exp(mixer.A_log)
    orders, step_dirs, _ = scan_tables(H, W, x.device)
    steps = torch.arange(H * W)
    y = 0
    for k in range(4):
        o = orders[k]
        p = steps if released else o
        B_k = B[..., p] + mixer.direction_Bs[step_dirs[k]].t()
        y_k = selective_scan(u[..., o], delta[..., p], A, B_k, C[..., p], mixer.D, delta_softplus=True,
                             delta_bias=mixer.dt_proj.bias if released else None)
        y = y + y_k[..., torch.argsort(o)]
    y = y * F.silu(z.flatten(1, 2).transpose(1, 2))
    return mixer.out_proj(y.transpose(1, 2)).view(b, H, W, -1)


@pytest.mark.parametrize('released', [True, False])
@torch.no_grad()
def test_mixer_math(model, released):
    mixer = model.blocks[1].mixer
    mixer.released_quirks = released
    try:
        x = torch.randn(2, 5, 7, model.embed_dim)
        with use_backend('reference'):
            expected = _explicit_mixer(mixer, x, released)
        assert_rel_close(mixer(x), expected, rel=1e-5)
    finally:
        mixer.released_quirks = True


@torch.no_grad()
def test_without_the_quirks_the_released_weights_compute_something_else(fixture, original_file, tensors):
    """The paper's math (released_quirks=False) on the same weights: finite, and far from the original's numbers."""
    model = create_from(fixture, original_file, released_quirks=False)
    assert all(not blk.mixer.released_quirks for blk in model.blocks)
    out, feats = model.forward_intermediates(tensors['input'])
    assert torch.isfinite(out).all()
    outputs = [(f'block {i}', feat, tensors[f'features.{i}']) for i, feat in enumerate(feats)]
    for what, actual, expected in outputs + [('logits', model.forward_head(out), tensors['output'])]:
        # 100x the parity bar (1e-4 relative): the stem and the residual stream are common to both
        assert (actual - expected).abs().max() > 1e-2 * expected.abs().max(), what


def test_cpu_backend_equals_reference_with_gradients(model, tensors):
    x = tensors['input.wide']

    def run(backend):
        model.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        with use_backend(backend):
            out = model(xg)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), xg.grad, {n: p.grad for n, p in model.named_parameters()}

    try:
        out_ref, gx_ref, g_ref = run('reference')
        out, gx, g = run('cpu')
    finally:
        model.zero_grad(set_to_none=True)
    assert_rel_close(out, out_ref, rel=1e-5)
    assert_rel_close(gx, gx_ref, rel=1e-5, msg='input grad')
    for name in g_ref:
        assert_rel_close(g[name], g_ref[name], rel=1e-4, msg=name)


def test_bf16_autocast_trains_one_step(fixture):
    torch.manual_seed(0)
    model = timm.create_model(fixture.model_name, **fixture.model_kwargs).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(2, 3, 80, 96), torch.tensor([1, 7])
    for _ in range(2):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), target)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize('size', [(16, 16), (17, 200), (250, 9)])
@torch.no_grad()
def test_small_and_odd_sizes(model, size):
    """Down to a 1x1 grid; one-row and one-column grids scan along their only line."""
    out, feats = model.forward_intermediates(torch.randn(1, 3, *size))
    assert torch.isfinite(out).all()
    assert feats[-1].shape[-2:] == tuple(-(-s // 16) for s in size)


@torch.no_grad()
def test_pos_embed_is_resized_on_load(fixture, original_file, tensors):
    """A model built for another size gets the checkpoint's table resized once, as its forward would."""
    big = create_from(fixture, original_file, img_size=(80, 112))
    assert big.pos_embed.shape == (1, 35, 32)
    assert_rel_close(big(tensors['input.wide']), tensors['output.wide'])


def _mmcls_checkpoint(state_dict):
    """What mmcv 1.x's runner saved for the authors (meta from their tools/train.py, EMA hook buffers)."""
    ema = {'ema_' + k.replace('.', '_'): v.clone() for k, v in state_dict.items() if 'running' not in k
           and 'num_batches' not in k}
    return dict(
        meta=dict(
            env_info='sys.platform: linux\nPython: 3.10.13\nPyTorch: 1.13.1+cu116', seed=1234567,
            mmcls_version='0.25.0', config="model = dict(type='ImageClassifier', backbone=dict(type='PlainMamba'))",
            CLASSES=('tench, Tinca tinca', 'goldfish, Carassius auratus'), epoch=300, iter=375300,
            mmcv_version='1.7.1', time='Mon Mar 11 10:00:00 2024', hook_msgs=dict(last_ckpt='epoch_300.pth'),
        ),
        state_dict=dict(state_dict, **ema),
        optimizer=dict(state={0: dict(step=torch.tensor(10.), exp_avg=torch.zeros(3))},
                       param_groups=[dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05, amsgrad=False, params=[0])]),
    )


@torch.no_grad()
def test_loads_the_mmcls_checkpoint_layout(fixture, tensors, tmp_path):
    """`state_dict` (with the EMA hook's `ema_*` buffers beside the evaluated weights), `meta`, `optimizer`."""
    path = tmp_path / 'l1.pth'
    torch.save(_mmcls_checkpoint(fixture.state_dict), path)
    model = create_from(fixture, path)
    assert_rel_close(model(tensors['input']), tensors['output'])


@torch.no_grad()
def test_loads_flat_checkpoints(fixture, tensors, tmp_path):
    flat = tmp_path / 'flat.pth'
    torch.save(fixture.state_dict, flat)
    assert_rel_close(create_from(fixture, flat)(tensors['input']), tensors['output'])
    unprefixed = tmp_path / 'unprefixed.pth'
    torch.save({k.removeprefix('backbone.'): v for k, v in fixture.state_dict.items()}, unprefixed)
    assert_rel_close(create_from(fixture, unprefixed)(tensors['input']), tensors['output'])


@torch.no_grad()
def test_new_class_count_drops_only_the_head(fixture, original_file, tensors):
    full = create_from(fixture, original_file)
    model = create_from(fixture, original_file, num_classes=5)
    x = tensors['input']
    assert model(x).shape == (2, 5)
    torch.testing.assert_close(model.forward_features(x), full.forward_features(x))
    headless = create_from(fixture, original_file, num_classes=0)
    torch.testing.assert_close(headless(x), full.forward_head(full.forward_features(x), pre_logits=True))


def test_filter_passes_our_format_through(fixture):
    converted = checkpoint_filter_fn(dict(fixture.state_dict), None)
    assert 'blocks.0.mixer.direction_Bs' in converted and 'norm.weight' in converted
    assert 'blocks.0.dw.1.running_var' in converted and 'patch_embed.proj.weight' in converted
    assert 'head.weight' in converted and not any(k.startswith(('backbone.', 'head.fc.')) for k in converted)
    assert checkpoint_filter_fn(dict(converted), None) == converted
    assert checkpoint_filter_fn({'state_dict': dict(converted)}, None) == converted


@pytest.mark.parametrize('variant, shapes', sorted(original_key_shapes('plainmamba').items()))
def test_every_original_key_maps_exactly(variant, shapes):
    assert_original_keys_map_exactly(f'zoo_{variant}', shapes, checkpoint_filter_fn)


class Config:
    """Stands in for an arbitrary pickled class (say mmcv's Config) that a checkpoint must not make us import."""


def test_weights_only_loading_refuses_arbitrary_objects(fixture, tmp_path):
    path = tmp_path / 'config_object.pth'
    torch.save(dict(state_dict=fixture.state_dict, meta=dict(config=Config())), path)
    with pytest.raises(CorruptWeightsError, match='Config'):
        create_from(fixture, path)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='dw_layers'):
        PlainMamba(depth=2, dw_layers=(2,))
    with pytest.raises(ValueError, match='patch_size'):
        PlainMamba(depth=1, patch_size=15)
    with pytest.raises(ValueError, match='conv_size'):
        PlainMamba(depth=1, conv_size=4)
    model = PlainMamba(depth=1, embed_dim=16, num_classes=0)
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt='NHWC')
    with pytest.raises(ValueError, match='global_pool'):
        PlainMamba(depth=1, global_pool='token')
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(10, 'max')


def test_stem_runs_channels_last_and_its_state_stays_dense(tmp_path):
    # oneDNN runs the stem's convolutions about 3x faster on channels-last maps and weights; savers that refuse
    # strided tensors (safetensors) must still take the state dict
    from safetensors.torch import load_file, save_file
    model = timm.create_model('zoo_plainmamba_l1', num_classes=0).eval()
    assert model.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    state = model.state_dict()
    assert all(v.is_contiguous() for v in state.values())
    save_file(state, tmp_path / 'weights.safetensors')
    copy = timm.create_model('zoo_plainmamba_l1', num_classes=0).eval()
    copy.load_state_dict(load_file(tmp_path / 'weights.safetensors'))
    assert copy.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)
        features = model.patch_embed(x)
    assert features.is_contiguous(memory_format=torch.channels_last)
