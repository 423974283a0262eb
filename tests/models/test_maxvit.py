"""MaxViT (_tf family): parity with timm's MaxxVit, any input size, window changes, timm's hosted weights.

The generic timm contract is checked for every zoo model in test_contract.py; this file holds what is MaxViT's own.
timm's maxxvit.py is the PyTorch reference implementation (the authors' code is TensorFlow): the parity tests build
timm's model beside ours with the same (perturbed random) weights.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

import zoo  # noqa: F401  (registers the zoo models)
from tests.parity import assert_rel_close, perturbed
from zoo.models.maxvit import MaxViT, PartitionAttention, checkpoint_filter_fn

# a small maxvit_tiny_tf: every code path of the family (MBConv, block + grid attention with the TF bias, the head)
SMALL = dict(embed_dim=(32, 64, 96, 128), depths=(1, 1, 1, 1), stem_width=16, head_hidden_size=128)


@pytest.fixture(scope='module')
def timm_small():
    torch.manual_seed(0)
    return perturbed(timm.create_model('maxvit_tiny_tf_224', **SMALL))


@pytest.fixture(scope='module')
def zoo_small(timm_small):
    model = timm.create_model('zoo_maxvit_tiny_tf_224', **SMALL).eval()
    model.load_state_dict(timm_small.state_dict())
    return model


@pytest.mark.parametrize('size', [(224, 224), (448, 224)])
@torch.no_grad()
def test_equals_timm_where_timm_accepts_the_size(timm_small, zoo_small, size):
    x = torch.randn(2, 3, *size)
    assert_rel_close(zoo_small(x), timm_small(x))
    ours = zoo_small.forward_intermediates(x, intermediates_only=True)
    theirs = timm_small.forward_intermediates(x, intermediates_only=True)[1:]  # timm's first level is the stem
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert_rel_close(a, b)


def test_gradients_equal_timm(timm_small, zoo_small):
    x = torch.randn(1, 3, 224, 224)
    grads = []
    for model in (timm_small, zoo_small):
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert any('relative_position_bias_table' in n for n in grads[0])
    for n, g in grads[0].items():
        assert_rel_close(grads[1][n], g, msg=n)


@pytest.mark.parametrize('size', [(256, 256), (97, 131)])
@torch.no_grad()
def test_takes_sizes_timm_rejects(timm_small, zoo_small, size):
    x = torch.randn(1, 3, *size)
    with pytest.raises((AssertionError, RuntimeError), match='divisible'):
        timm_small(x)
    out, intermediates = zoo_small.forward_intermediates(x)
    for feat, red in zip(intermediates, (4, 8, 16, 32)):
        assert feat.shape[-2:] == (math.ceil(size[0] / red), math.ceil(size[1] / red))
        assert torch.isfinite(feat).all()
    logits = zoo_small.forward_head(out)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def _windows(partition_block: bool, size, partition):
    """Each window's real tokens as (row, col, in-window row, in-window col), padding to multiples as the op does:
    blocks are (wh, ww) tiles; grid window (i, j) holds the tokens (a * sh + i, b * sw + j), sh = ceil(H / wh)."""
    (H, W), (wh, ww) = size, partition
    sh, sw = math.ceil(H / wh), math.ceil(W / ww)
    windows = []
    for i in range(sh):
        for j in range(sw):
            if partition_block:
                members = [(i * wh + a, j * ww + b, a, b) for a in range(wh) for b in range(ww)]
            else:
                members = [(a * sh + i, b * sw + j, a, b) for a in range(wh) for b in range(ww)]
            windows.append([m for m in members if m[0] < H and m[1] < W])
    return [w for w in windows if w]


def _attention_over_valid_keys(block: PartitionAttention, x: torch.Tensor) -> torch.Tensor:
    """Block or grid attention at any size as it should be: each window's real tokens attend to each other only,
    with timm's relative position bias (RelPosBiasTf.get_bias) for their in-window positions."""
    attn = block.attn
    B, H, W, C = x.shape
    wh, ww = block.partition_size
    bias = attn.rel_pos.get_bias().view(attn.num_heads, wh * ww, wh * ww)
    out = torch.empty(B, H, W, attn.proj.out_features)
    for members in _windows(block.partition_block, (H, W), (wh, ww)):
        rows, cols, a, b = (torch.tensor(t) for t in zip(*members))
        tokens = x[:, rows, cols]  # (B, n, C)
        q, k, v = attn.qkv(tokens).view(B, len(members), 3, attn.num_heads, attn.dim_head).permute(2, 0, 3, 1, 4)
        idx = a * ww + b
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, idx][:, :, idx], scale=attn.scale)
        out[:, rows, cols] = attn.proj(y.transpose(1, 2).reshape(B, len(members), -1))
    return out


@pytest.mark.parametrize('size', [(9, 10), (5, 5), (16, 17), (14, 14)])
@pytest.mark.parametrize('partition', ['attn_block', 'attn_grid'])
@torch.no_grad()
def test_partition_attention_ignores_padding(zoo_small, timm_small, size, partition):
    block = getattr(zoo_small.stages[1].blocks[0], partition)  # 64 channels, 2 heads, window 7
    assert isinstance(block, PartitionAttention) and block.partition_size == (7, 7)
    x = block.norm1(torch.randn(2, *size, block.attn.qkv.in_features))
    assert_rel_close(block._partition_attn(x), _attention_over_valid_keys(block, x))
    if size[0] % 7 == 0 and size[1] % 7 == 0:  # where timm accepts the size, it agrees
        theirs = getattr(timm_small.stages[1].blocks[0], partition)._partition_attn(x)
        assert_rel_close(block._partition_attn(x), theirs)


@pytest.fixture
def timm_small_file(timm_small, tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in timm_small.state_dict().items()}, path)
    return path


@torch.no_grad()
def test_loads_timm_hub_format(timm_small, timm_small_file):
    model = timm.create_model(
        'zoo_maxvit_tiny_tf_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(timm_small_file)), **SMALL)
    x = torch.randn(1, 3, 224, 224)
    assert_rel_close(model.eval()(x), timm_small(x))


@torch.no_grad()
def test_window_is_a_construction_argument_and_tables_are_resized(timm_small, timm_small_file):
    """Weights trained with 7x7 windows in a model built for 128 (4x4 windows): the bias tables are resized as
    timm resizes them, and the model equals timm's at 128."""
    overlay = dict(file=str(timm_small_file))
    ours = timm.create_model('zoo_maxvit_tiny_tf_224', pretrained=True, pretrained_cfg_overlay=overlay,
                             img_size=128, **SMALL).eval()
    assert ours.window_size == (4, 4)
    tables = [p for n, p in ours.named_parameters() if n.endswith('relative_position_bias_table')]
    assert tables and all(t.shape[-2:] == (7, 7) for t in tables)

    theirs = timm.create_model('maxvit_tiny_tf_224', img_size=128, **SMALL).eval()
    theirs.load_state_dict(timm.models.maxxvit.checkpoint_filter_fn(timm_small.state_dict(), theirs))
    x = torch.randn(1, 3, 128, 128)
    assert_rel_close(ours(x), theirs(x))

    by_window = timm.create_model('zoo_maxvit_tiny_tf_224', pretrained=True, pretrained_cfg_overlay=overlay,
                                  window_size=4, **SMALL).eval()
    assert by_window.window_size == (4, 4)
    torch.testing.assert_close(by_window(x), ours(x))

    # timm's set_input_size changes the window of a built model the same way
    resized = timm.create_model('zoo_maxvit_tiny_tf_224', pretrained=True, pretrained_cfg_overlay=overlay,
                                **SMALL).eval()
    resized.set_input_size(img_size=128)
    assert resized.window_size == (4, 4)
    torch.testing.assert_close(resized(x), ours(x))


def test_filter_unwraps_and_keeps_timm_keys(timm_small, zoo_small):
    sd = timm_small.state_dict()
    for wrapper in ('state_dict', 'model'):
        filtered = checkpoint_filter_fn({wrapper: dict(sd)}, zoo_small)
        assert filtered.keys() == sd.keys()
        assert all(torch.equal(filtered[k], sd[k]) for k in sd)


@torch.no_grad()
def test_features_only_at_a_detection_size(timm_small):
    model = timm.create_model('zoo_maxvit_tiny_tf_224', features_only=True, **SMALL).eval()
    model.load_state_dict(timm_small.state_dict(), strict=False)
    x = torch.randn(1, 3, 800, 1216)
    features = model(x)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    for feat, chs, red in zip(features, model.feature_info.channels(), model.feature_info.reduction()):
        assert feat.shape == (1, chs, math.ceil(800 / red), math.ceil(1216 / red))
        assert torch.isfinite(feat).all()


def test_no_weight_decay_names_the_bias_tables(zoo_small):
    names = zoo_small.no_weight_decay()
    tables = {n for n, _ in zoo_small.named_parameters() if 'relative_position_bias_table' in n}
    assert names == tables and len(tables) == 2 * 4  # block and grid attention in each of the 4 blocks


def test_the_zoo_has_every_tf_variant_and_hosted_tag_of_timm():
    theirs = timm.list_pretrained('maxvit_*_tf_*')
    assert len(theirs) == 21
    for tag in theirs:
        ours = get_pretrained_cfg('zoo_' + tag).to_dict()
        cfg = get_pretrained_cfg(tag).to_dict()
        assert ours['hf_hub_id'] == 'timm/' + tag
        for key in ('num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation'):
            assert ours[key] == cfg[key], (tag, key)
        assert ours['pool_size'] == tuple(s // 32 for s in cfg['input_size'][1:])
    assert sorted(timm.list_models('zoo_maxvit_*')) == sorted('zoo_' + n for n in timm.list_models('maxvit_*_tf_*'))


def test_is_timms_class_and_refuses_configs_the_kernel_cannot_run():
    with torch.device('meta'):
        model = timm.create_model('zoo_maxvit_tiny_tf_224', **SMALL)
        assert isinstance(model, MaxViT) and isinstance(model, timm.models.maxxvit.MaxxVit)
        with pytest.raises(ValueError, match='bias_tf'):
            timm.create_model('zoo_maxvit_tiny_tf_224', transformer_rel_pos_type='bias', **SMALL)
        with pytest.raises(ValueError, match='attn_drop'):
            timm.create_model('zoo_maxvit_tiny_tf_224', transformer_attn_drop=0.1, **SMALL)
