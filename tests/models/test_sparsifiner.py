import copy
import math

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import kernels
import zoo  # noqa: F401  (registers the zoo models)
import zoo.models.sparsifiner as sparsifiner
from tests.parity import FIXTURES, assert_rel_close, load_parity_fixture, perturbed

NAME = 'zoo_sparsifiner_deit_small'
# the fixture's backbone: img 160 (10 x 10 patches, N = 101: r = 16 basis vectors, k = 26 keys), width 48
SMALL = dict(img_size=160, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def fixture_tensors():
    with safe_open(FIXTURES / 'sparsifiner_parity.safetensors', framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys() if not k.startswith('ckpt.')}


@pytest.fixture(scope='module')
def original(tmp_path_factory):
    """The zoo model loaded from the authors' checkpoint format ({'model': state_dict}) of the fixture."""
    fixture = load_parity_fixture('sparsifiner_parity')
    path = fixture.save_original_checkpoint(tmp_path_factory.mktemp('sparsifiner') / 'checkpoint-best.pth')
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    model = timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay,
                              **fixture.model_kwargs).eval()
    return model, fixture, fixture_tensors()


@torch.no_grad()
def test_parity_with_original_implementation(original):
    """Eval: the same logits, final features and kept keys as the authors' masked dense attention."""
    model, fixture, expected = original
    assert_rel_close(model(fixture.input), fixture.output, msg='logits')
    out = model.forward_sparsifiner(fixture.input, return_attn_mask=True)
    assert_rel_close(out['x'], fixture.output, msg='forward_sparsifiner logits')
    assert_rel_close(out['features'], expected['features'], msg='features')
    for i, mask in enumerate(out['attn_mask_list']):
        assert torch.equal(mask.to(torch.uint8), expected[f'attn_mask.{i}']), f'block {i} keeps other keys'


@torch.no_grad()
def test_parity_attention_reconstruction_stage(original):
    """The authors' predictor-training forward (LOSS.USE_ATTN_RECON): dense attention, raw basis, all coefficients."""
    model, fixture, expected = original
    out = model.forward_sparsifiner(fixture.input[:1], attn_recon=True)
    assert_rel_close(out['x'], expected['recon.output'], msg='logits')
    for i, approx in enumerate(out['approx_attn_list']):
        assert_rel_close(approx, expected[f'recon.approx_attn.{i}'], msg=f'approx_attn {i}')


def test_sparse_attention_runs_on_the_predicted_keys(monkeypatch):
    """The patch queries go through kernels.sparse_attention with k = ceil(0.25 * 197) = 50 keys each."""
    widths = []

    def recording(q, k, v, key_index, **kwargs):
        widths.append((q.shape[2], k.shape[2], key_index.shape[-1]))
        return kernels.sparse_attention(q, k, v, key_index, **kwargs)

    monkeypatch.setattr(sparsifiner, 'sparse_attention', recording)
    model = timm.create_model(NAME).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert widths == [(196, 197, 50)] * 12


@torch.no_grad()
def test_default_config_numbers():
    """The authors' default: r = 197 // 6 = 32 basis vectors, 8 coefficients kept, basis entries <= 0.02 zeroed,
    50 of 197 keys per patch query, the class-token row dense."""
    torch.manual_seed(0)
    model = timm.create_model(NAME).eval()
    predictor = model.blocks[0].attn.mask_predictor
    assert (predictor.reduced_n, predictor.reduced_c, predictor.basis_topk) == (32, 32, 8)
    assert predictor.scale == 6 ** -0.5 and predictor.budget(197) == 50
    q, k = torch.randn(2, 2, 6, 197, 64).unbind(0)
    approx, coef = predictor.approx_attention(q, k)
    assert coef.shape == (2, 6, 196, 32) and ((coef > 0).sum(-1) == 8).all()
    assert coef.sum(-1).max() < 1  # the kept coefficients are not renormalised
    basis = torch.nn.functional.threshold(predictor.proj_back_n.abs().t(), 0.02, 0.0)
    torch.testing.assert_close(approx, coef @ basis)
    out = model.forward_sparsifiner(torch.randn(1, 3, 224, 224), return_attn_mask=True)
    mask, index = out['attn_mask_list'][5], out['key_index_list'][5]
    assert index.shape == (1, 6, 196, 50)
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:].sum(-1) == 50).all()
    assert torch.equal(mask[:, :, 1:].gather(-1, index), torch.ones_like(index, dtype=mask.dtype))


def deit_reference(tmp_path, wrapped: bool):
    """A DeiT in timm's layout (small dims), perturbed, saved as timm's hub file or as the original DeiT .pth."""
    torch.manual_seed(0)
    deit = perturbed(timm.create_model('deit_small_patch16_224', **SMALL))
    if wrapped:  # dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth: {'model': state_dict}
        path = tmp_path / 'deit_small_patch16_224-cd65a155.pth'
        torch.save({'model': deit.state_dict()}, path)
    else:
        path = tmp_path / 'model.safetensors'
        save_file(deit.state_dict(), path)
    return deit, path


@pytest.mark.parametrize('wrapped', [False, True], ids=['timm_hub', 'deit_original'])
@torch.no_grad()
def test_pretrained_loads_deit_backbone_and_warns(tmp_path, wrapped):
    deit, path = deit_reference(tmp_path, wrapped)
    overlay = dict(file=str(path), num_classes=SMALL['num_classes'])
    with pytest.warns(UserWarning, match='no Sparsifiner connectivity-predictor weights'):
        model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, **SMALL).eval()
    x = torch.randn(2, 3, 160, 160)
    model.set_keep_rate(1.0)  # every key kept: the DeiT itself
    torch.testing.assert_close(model(x), deit(x), rtol=1e-5, atol=1e-5)
    model.set_keep_rate(0.25)
    assert not torch.allclose(model(x), deit(x), atol=1e-3)  # the untrained predictor's choice of keys
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in deit.state_dict().items())


def test_pretrained_cfg_names_the_deit_weights():
    cfg = timm.models.get_pretrained_cfg(NAME).to_dict()
    assert cfg['hf_hub_id'] == 'timm/deit_small_patch16_224.fb_in1k' and cfg['license'] == 'apache-2.0'
    assert cfg['paper_ids'] == 'arXiv:2303.13755' and cfg['crop_pct'] == 0.875


@torch.no_grad()
def test_keep_rate_at_construction_and_inference():
    torch.manual_seed(0)
    rates = [0.1, 0.25, 0.5, 1.0] * 3
    model = timm.create_model(NAME, keep_rate=rates).eval()
    assert model.keep_rates == rates
    widths = [index.shape[-1] for index in model.forward_sparsifiner(torch.randn(1, 3, 224, 224))['key_index_list']]
    assert widths == [20, 50, 99, 197] * 3
    model.set_keep_rate(0.5)
    assert model.keep_rates == [0.5] * 12
    x = torch.randn(1, 3, 224, 224)
    logits = model(x)
    model.set_keep_rate(1.0)
    dense = model(x)
    assert not torch.allclose(logits, dense, atol=1e-3)
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r'keep_rate must be a number in \(0, 1\]'):
            model.set_keep_rate(bad)
    with pytest.raises(ValueError, match='one rate or one per block'):
        model.set_keep_rate([0.5, 0.5])


def test_construction_errors():
    with pytest.raises(ValueError, match='attn_drop_rate must be 0'):
        timm.create_model(NAME, attn_drop_rate=0.1)
    with pytest.raises(ValueError, match=r'\(1 \+ 2\*2\) // 6 = 0 basis vectors for basis_topk = 8'):
        timm.create_model(NAME, img_size=32, depth=1)
    with pytest.raises(TypeError, match="unsupported arguments \\['reg_tokens'\\]"):
        timm.create_model(NAME, reg_tokens=4)


@torch.no_grad()
def test_other_input_sizes_resize_the_token_tables(original):
    """At another size the position embedding and the predictor's proj_n / proj_back_n follow the token grid, and
    running there is the same as loading the weights into a model built for that size."""
    model, fixture, _ = original
    x = torch.randn(1, 3, 176, 176)  # 11 x 11 patches
    # reduce_n_factor 7.6 keeps r = 122 // 7.6 = 16 basis vectors at 176, as the checkpoint's at 160
    resized = timm.create_model(NAME, **dict(SMALL, img_size=176, reduce_n_factor=7.6)).eval()
    resized.load_state_dict(sparsifiner.checkpoint_filter_fn({'model': fixture.state_dict}, resized))
    assert resized.blocks[0].attn.mask_predictor.proj_n.shape == (122, 16)
    torch.testing.assert_close(resized(x), model(x), rtol=1e-5, atol=1e-5)
    # set_input_size resizes in place, to the same tables
    moved = timm.create_model(NAME, **SMALL).eval()
    moved.load_state_dict(model.state_dict())
    moved.set_input_size(img_size=(176, 176))
    torch.testing.assert_close(moved.blocks[1].attn.mask_predictor.proj_back_n,
                               resized.blocks[1].attn.mask_predictor.proj_back_n)
    torch.testing.assert_close(moved(x), model(x), rtol=1e-5, atol=1e-5)
    # odd sizes: padded to whole patches, budget from the actual token count (1 + 7 * 9 = 64 -> 16 keys)
    out = model.forward_sparsifiner(torch.randn(1, 3, 97, 131))
    assert out['key_index_list'][0].shape == (1, 3, 63, 16) and out['x'].shape == (1, 10)
    with pytest.raises(ValueError, match=r'img_size=160'):
        sparsifiner.checkpoint_filter_fn(fixture.state_dict, timm.create_model(NAME, **dict(SMALL, img_size=176)))


def test_forward_sparsifiner_outputs_and_gradients():
    """The authors' training outputs, differentiable where their losses need it, with and without checkpointing."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, **SMALL).train()
    x = torch.randn(2, 3, 160, 160)
    out = model.forward_sparsifiner(x, attn_recon=True, return_unmasked_attn=True)
    assert out['x'].shape == (2, 10) and out['features'].shape == (2, 100, 48)
    assert out['unmasked_attn_list'][0].shape == (2, 3, 101, 101)
    torch.testing.assert_close(out['unmasked_attn_list'][0].sum(-1), torch.ones(2, 3, 101))
    # attention reconstruction: the predictor learns from the teacher's attention rows (here: its own)
    loss = sum(torch.nn.functional.mse_loss(a, t[:, :, 1:].detach(), reduction='sum')
               for a, t in zip(out['approx_attn_list'], out['unmasked_attn_list']))
    loss.backward()
    predictor = [p for n, p in model.named_parameters() if 'mask_predictor' in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_cp = model.forward_sparsifiner(x, attn_recon=True, return_unmasked_attn=True)
    sum(torch.nn.functional.mse_loss(a, t[:, :, 1:].detach(), reduction='sum')
        for a, t in zip(out_cp['approx_attn_list'], out_cp['unmasked_attn_list'])).backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5, msg=n)


def test_training_forward_is_the_eval_forward():
    """In training (no dropout) forward gives the eval logits; the sparse path's gradient reaches the backbone."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, **SMALL)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = model.eval()(x)
    out = model.train()(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def attention_macs(keep_rate: float) -> float:
    """Multiply-accumulates of one DeiT-S block's attention core at 224 (predictor + attention, without the qkv and
    output projections), counted on the meta device with the reference backend (its products scale with k)."""
    with torch.device('meta'):
        attn = sparsifiner.SparsifinerAttention(384, 6, (14, 14), keep_rate=keep_rate).eval()
        x = torch.empty(1, 197, 384)
    with kernels.use_backend('reference'), FlopCounterMode(display=False) as counter:
        attn(x)
    projections = 4 * 197 * 384 * 384  # qkv (3) and proj (1)
    return counter.get_total_flops() / 2 - projections


def test_attention_macs_fall_with_the_keep_rate():
    dense = 2 * 197 * 197 * 384  # q k^T and attn v of timm's DeiT-S attention
    macs = {rate: attention_macs(rate) for rate in (1.0, 0.5, 0.25, 0.1)}
    assert macs[1.0] == dense  # every key kept: dense attention, no predictor
    assert macs[0.5] > macs[0.25] > macs[0.1]
    assert macs[0.25] < 0.8 * dense
    # predictor: low-rank q/k (2 x 197 x 6 x 64 x 32), k projection and logits (2 x 6 x 32 x 197 x 32),
    # approximate attention (6 x 196 x 32 x 197); attention: class row dense + 196 x k keys
    predictor = 2 * 197 * 6 * 64 * 32 + 2 * 6 * 32 * 197 * 32 + 6 * 196 * 32 * 197
    assert macs[0.25] == predictor + 2 * 6 * 64 * (197 + 196 * math.ceil(0.25 * 197))


@torch.no_grad()
def test_lvvit_parity_with_original_implementation(tmp_path):
    """LV-ViT-S variant (the authors' SparsifinerLVViT as their main.py builds it), flat checkpoint as LV-ViT's."""
    fixture = load_parity_fixture('sparsifiner_lvvit_parity')
    expected = {}
    with safe_open(FIXTURES / 'sparsifiner_lvvit_parity.safetensors', framework='pt') as f:
        expected = {k: f.get_tensor(k) for k in f.keys() if not k.startswith('ckpt.')}
    path = fixture.save_original_checkpoint(tmp_path / 'sparsifiner_lvvit.pth')
    overlay = dict(file=str(path), num_classes=fixture.model_kwargs['num_classes'])
    model = timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay,
                              **fixture.model_kwargs).eval()
    assert_rel_close(model(fixture.input), fixture.output, msg='logits (class head + 0.5 x max of the patch head)')
    out = model.forward_sparsifiner(fixture.input, return_attn_mask=True)
    assert_rel_close(out['features'], expected['features'], msg='patch logits')
    for i, mask in enumerate(out['attn_mask_list']):
        assert torch.equal(mask.to(torch.uint8), expected[f'attn_mask.{i}']), f'block {i} keeps other keys'
    # training: x is the class head alone (BatchNorm on batch statistics, which a copy keeps to itself)
    out = copy.deepcopy(model).train().forward_sparsifiner(fixture.input[:1])
    assert_rel_close(out['x'], expected['train.output'], msg='training logits')
    assert_rel_close(out['features'], expected['train.features'], msg='training patch logits')

    # the LV-ViT-S release (no predictor): the backbone loads, with the warning
    backbone = {k: v for k, v in fixture.state_dict.items() if 'mask_predictor' not in k}
    torch.save(backbone, tmp_path / 'lvvit_s-26M-224-83.3.pth.tar')
    overlay = dict(file=str(tmp_path / 'lvvit_s-26M-224-83.3.pth.tar'), num_classes=10)
    with pytest.warns(UserWarning, match='no Sparsifiner connectivity-predictor weights'):
        loaded = timm.create_model(fixture.model_name, pretrained=True, pretrained_cfg_overlay=overlay,
                                   **fixture.model_kwargs).eval()
    for m in (model, loaded):
        m.set_keep_rate(1.0)
    torch.testing.assert_close(loaded(fixture.input), model(fixture.input))
