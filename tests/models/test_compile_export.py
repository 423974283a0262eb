"""torch.compile, torch.export, FX and ONNX for every registered family (issue 16).

One model per family: the family's smallest variant (fewest parameters among ``timm.list_models('zoo_*')``),
shrunk through its own keyword arguments (``SMALL``) to keep CI fast; a family registered later without an entry
here is built with one block per stage (``depths``) or a few blocks (``depth``) where its constructor takes those,
else as registered. Every family is checked for:

* ``torch.compile(model, fullgraph=True)`` (inductor): forward and backward equal eager; on CUDA (traced on fake
  tensors, no GPU needed) the graph launches one Triton kernel per kernel-op call and holds no opaque zoo operator,
  and torch.export with dynamic height and width keeps the Triton operators;
* ``torch.export.export`` with dynamic height and width: the exported program equals eager at two other sizes;
* FX: timm's feature extraction (``features_only=True, feature_cls='fx'``) equals the eager module outputs, and
  timm's own ``test_model_forward_fx`` / ``test_model_backward_fx`` checks (symbolic tracing through timm's
  leaf modules and functions) hold;
* ONNX: ``torch.onnx.export(..., dynamo=True)`` runs in onnxruntime with the eager outputs (within 1e-4) at the
  export size and at another size.
"""
import inspect
from typing import Any, Dict, List, Tuple

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import get_pretrained_cfg
from torch._subclasses.fake_tensor import FakeTensorMode
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import zoo  # noqa: F401  (registers the models)
from tests.compiled_graphs import DispatchLog, compiled_graphs, launches, trace_fake_cuda


def _num_params(name: str) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def _smallest_variants() -> Dict[str, str]:
    """family -> its variant with the fewest parameters."""
    families: Dict[str, List[str]] = {}
    for name in timm.list_models('zoo_*'):
        families.setdefault(name.split('_')[1], []).append(name)
    return {family: min(names, key=_num_params) for family, names in sorted(families.items())}


FAMILIES = _smallest_variants()

# every code path of the family's smallest variant at a fraction of its cost (one block per stage, narrow)
SMALL: Dict[str, Dict[str, Any]] = {
    'biformer': dict(depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48), head_dim=8),
    'davit': dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    'litv2': dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4), mlp_ratio=2.),
    'lookupvit': dict(embed_dim=32, num_heads=4, depth=4),
    'mambaout': dict(depths=(1, 1, 1, 1), dims=(8, 12, 16, 24)),
    'maxvit': dict(embed_dim=(32, 64, 96, 128), depths=(1, 1, 1, 1), stem_width=16, head_hidden_size=128),
    'plainmamba': dict(embed_dim=32, depth=4),
    'sparsifiner': dict(embed_dim=48, depth=4, num_heads=3),
    'transnext': dict(embed_dims=(24, 48, 72, 96), num_heads=(1, 2, 3, 4), mlp_ratios=(4, 4, 2, 2),
                      depths=(1, 1, 1, 1)),
    'van': dict(embed_dims=(8, 12, 16, 24), depths=(1, 1, 1, 1)),
    'vim': dict(embed_dim=32, depth=4, d_state=8),
}
NUM_CLASSES = 10
SIZE = 64
BATCH = 2


def _default_small(name: str) -> Dict[str, Any]:
    """For a family without a SMALL entry: one block per stage, or four blocks, where the constructor takes it."""
    params = inspect.signature(type(timm.create_model(name, pretrained=False)).__init__).parameters
    if 'depths' in params:
        stages = len(params['depths'].default) if isinstance(params['depths'].default, (tuple, list)) else 4
        return dict(depths=(1,) * stages)
    if 'depth' in params:
        return dict(depth=4)
    return {}


def _spread_predictor_basis(model: torch.nn.Module) -> None:
    """Sparsifiner's predictor as after training: at initialisation its basis (|proj_back_n| ~ 0.016) falls below
    the 0.02 threshold almost everywhere, so 94% of the approximate attention is 0 and the top-k key selection picks
    among ties, which torch and onnxruntime break differently. Spread values select the same keys everywhere."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('proj_n', 'proj_back_n')):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


# weights as a trained model has them where the initialisation makes a family's outputs ill-defined
TRAINED_LIKE = {'sparsifiner': _spread_predictor_basis}


def create(family: str, **kwargs) -> torch.nn.Module:
    name = FAMILIES[family]
    small = SMALL[family] if family in SMALL else _default_small(name)
    torch.manual_seed(0)
    model = timm.create_model(name, **dict(small, num_classes=NUM_CLASSES, **kwargs))
    if family in TRAINED_LIKE:
        TRAINED_LIKE[family](model)
    return model


def input_for(family: str, size=SIZE, batch: int = BATCH) -> torch.Tensor:
    in_chans = get_pretrained_cfg(FAMILIES[family]).to_dict()['input_size'][0]
    size = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, in_chans, *size, generator=torch.Generator().manual_seed(1))


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _tensors(o)]


def assert_close(actual, expected, rel: float = 1e-4, msg: str = ''):
    """Every tensor within ``rel`` of the largest magnitude of its expected tensor (at least 1e-4 absolute)."""
    actual, expected = _tensors(actual), _tensors(expected)
    assert len(actual) == len(expected), msg
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f'{msg} [{i}]: shape {tuple(a.shape)} != {tuple(e.shape)}'
        err = (a.double() - e.double()).abs().max().item() if e.numel() else 0.
        bound = rel * max(e.abs().max().item() if e.numel() else 0., 1.)
        assert err <= bound, f'{msg} [{i}]: max abs error {err:.3g} > {bound:.3g}'


def _loss(out: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return (out * weights).sum()


def _forward_backward(model, x) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(out), [x, *params], allow_unused=True)
    return out.detach(), [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, [x, *params])]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """No compiled code from an earlier run: the on-disk caches key a graph by its code, not by the fake
    implementations of the zoo's operators, so code compiled by an earlier version of the zoo could be reused."""
    torch._dynamo.reset()
    with torch.compiler.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_compile_fullgraph_forward_backward(family, monkeypatch):
    # as on GitHub Actions: inductor refuses an implicit fallback for an operator with a decomposition when CI is set
    monkeypatch.setenv('CI', 'true')
    model = create(family).eval()
    x = input_for(family)
    out, grads = _forward_backward(model, x)
    compiled = torch.compile(model, fullgraph=True)
    out_c, grads_c = _forward_backward(compiled, x)
    assert_close(out_c, out, msg=f'{family} compiled output')
    assert_close(grads_c, grads, rel=1e-3, msg=f'{family} compiled gradients')


def _kernel_calls(family: str) -> int:
    """The zoo kernel ops an eager CPU forward of the small model calls (region_topk, a few PyTorch ops with no
    kernel of its own, not counted)."""
    model = create(family).eval()
    with torch.no_grad(), DispatchLog() as log:
        model(input_for(family))
    return sum(name.startswith('zoo.') and 'region_topk' not in name for name, _ in log.calls)


@pytest.mark.parametrize('family', FAMILIES)
def test_compile_on_cuda_launches_the_triton_kernels(family, caplog):
    trace_fake_cuda(caplog)
    name = FAMILIES[family]
    with torch.device('meta'):
        model = timm.create_model(name, **dict(SMALL.get(family) or _default_small(name), num_classes=NUM_CLASSES))
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device='cuda').eval()
        with torch.no_grad():
            graphs = compiled_graphs(model, torch.empty(input_for(family).shape, device='cuda'))
        x = torch.empty(input_for(family, batch=1).shape, device='cuda')
        exported = torch.export.export(model, (x,), dynamic_shapes=_dynamic_hw()).graph_module
    calls = _kernel_calls(family)
    found = [launch for gm in graphs for launch in launches(gm)]
    assert not [f for f in found if f.startswith('zoo.')], f'{family}: opaque operator calls in the compiled graph'
    assert len(found) == calls, f'{family}: {found}'
    # torch.export keeps operators (AOTInductor decomposes them later): the Triton forms, with dynamic height/width
    ops = [f for f in launches(exported) if 'region_topk' not in f]
    assert len(ops) == calls and all(f.endswith('_triton.default') for f in ops), f'{family}: {ops}'


def _dynamic_hw():
    h, w = torch.export.Dim('h', min=2, max=16), torch.export.Dim('w', min=2, max=16)
    return ({0: torch.export.Dim.STATIC, 2: 32 * h, 3: 32 * w},)


OTHER_SIZES = ((96, 128), (160, 64))


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_export_dynamic_height_width(family):
    model = create(family).eval()
    program = torch.export.export(model, (input_for(family, batch=1),), dynamic_shapes=_dynamic_hw())
    exported = program.module()
    with torch.no_grad():
        for size in OTHER_SIZES:
            x = input_for(family, size, batch=1)
            assert_close(exported(x), model(x), msg=f'{family} exported at {size}')


@pytest.mark.parametrize('family', FAMILIES)
def test_fx_feature_extraction(family):
    model = create(family).eval()
    fx = create(family, features_only=True, feature_cls='fx').eval()
    missing, _ = fx.graph_module.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    names = [info['module'] for info in fx.feature_info.get_dicts()]
    found = {}  # the eager outputs of the modules whose outputs the FX graph returns
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: found.__setitem__(n, o))
             for n in names]
    x = input_for(family)
    with torch.no_grad():
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
        features = _tensors(fx(x))
    assert len(features) == len(names)
    for name, feature in zip(names, features):
        # a block that returns several tensors (Vim: the hidden and residual streams; LookupViT: the compressed and
        # lookup tokens) is one feature: torchvision's extractor returns the tensor the module computed last
        candidates = [t for t in _tensors(found[name]) if t.shape == feature.shape]
        assert candidates, f'{family} fx feature {name}: no eager output of shape {tuple(feature.shape)}'
        errors = [(feature - t).abs().max().item() for t in candidates]
        assert min(errors) <= 1e-4 * max(candidates[0].abs().max().item(), 1.), f'{family} fx feature {name}: {errors}'


def _tracer_kwargs():
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                param_shapes_constant=True)


def _create_fx_model(model: torch.nn.Module, train: bool = False):
    """timm's tests/test_models.py ``_create_fx_model``: trace with timm's leaf modules and functions, return the
    output node (in train mode the nodes feeding the output)."""
    tracer_kwargs = _tracer_kwargs()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-graph_node_names.index(n)] for n in output_node_names]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=eval_return_nodes, tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize('family', FAMILIES)
def test_model_forward_fx(family):
    model = create(family).eval()
    x = input_for(family)
    with torch.no_grad():
        out = model(x)
        fx_out = torch.cat(tuple(_create_fx_model(model)(x).values()))
    assert torch.equal(fx_out, out)


@pytest.mark.parametrize('family', FAMILIES)
def test_model_backward_fx(family):
    model = create(family, drop_path_rate=0.).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model, train=True)
    out = torch.cat(tuple(fx_model(input_for(family)).values()))
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'
    assert out.shape[-1] == NUM_CLASSES
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_onnx_export_matches_eager_in_onnxruntime(family, tmp_path):
    import onnxruntime

    model = create(family).eval()
    x = input_for(family, batch=1)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=_dynamic_hw(), verbose=False)
    path = tmp_path / f'{family}.onnx'
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name
    with torch.no_grad():
        for size in ((SIZE, SIZE), OTHER_SIZES[0]):
            x = input_for(family, size, batch=1)
            (out,) = session.run(None, {input_name: x.numpy()})
            assert_close(torch.from_numpy(out), model(x), msg=f'{family} onnxruntime at {size}')
