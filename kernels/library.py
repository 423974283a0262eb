"""Every public op as one PyTorch operator in the ``zoo`` namespace, so torch.compile, torch.export, FX and ONNX
see a single call.

An op ``<name>`` is two custom operators (``torch.library.custom_op``):

``zoo::<name>(<arguments>, str backend) -> (<outputs>, <statistics>)``
    applies the backend rule (:func:`kernels.backend.select`) to the *requested* backend it is given (``auto``,
    ``reference``, ``cpu``, ``triton``, read in Python at the call) and runs that backend's ``forward``. The
    statistics are what the backend's backward needs beyond inputs and outputs (a log-sum-exp, chunk states),
    empty tensors where it needs none. The fake (meta) implementation applies the same rule to the fake tensors'
    device, dtype and shapes, so it describes the same backend's outputs exactly (shapes, strides, dtypes).
``zoo::<name>_backward(Tensor?[] grads, Tensor?[] inputs, Tensor[] outputs, bool[] needs, <scalar arguments>)``
    the same backend's ``backward``; registered as the forward's autograd formula (``register_autograd``).

``zoo::<name>_triton`` and ``zoo::<name>_triton_backward``
    the same two on the Triton backend, registered with ``torch.library.triton_op``: their implementations launch
    the kernels through ``torch.library.wrap_triton``, so torch.compile and torch.export trace into them and see
    each kernel launch (inductor schedules and launches the kernels itself) instead of one opaque call. A call
    whose backend rule picks triton (CUDA tensors, or an explicit ``triton`` under ``TRITON_INTERPRET=1``) runs
    these; every other call runs the first two.

Passing the requested backend as an argument ties forward, fake and backward to one backend even when
``backward()`` runs outside the ``use_backend`` block of the forward, and keeps exported graphs portable
(``auto`` is resolved where the graph runs). A compiled graph keeps the backend requested when it was traced.

A backend is an object with ``forward(**arguments) -> tuple`` and ``backward(grads, outputs, needs, **arguments)
-> list`` (one gradient or None per differentiable argument); :class:`Recompute` makes one from a plain PyTorch
function (the reference backends: gradients by recomputation with torch.func.vjp).

ONNX: each op registers a decomposition into standard PyTorch ops (its reference math, or a chunked form of it)
in ``torch._decomp.decomposition_table``; ``torch.onnx.export(..., dynamo=True)`` applies it to ops that ONNX
does not know, so an exported model holds plain ONNX ops. torch.compile and torch.export keep the operator: inductor
runs it as a fallback kernel that the fake implementation registers (:func:`_inductor_fallback`).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts an operator as the PyTorch products its backend runs
(the operator's flop formula runs the backend's forward, or backward, under a counter of its own; the cpu
backend's forward on meta copies of the arguments, where it takes its PyTorch route: a native loop's products
counted as that route's, at no cost), so model cards and benchmarks count what they counted before the ops
became operators.

FX: :func:`fx_leaf` makes the public function a leaf of ``torch.fx.symbolic_trace`` (one ``call_function`` node
that calls it again when the graph runs), so argument checks never see a Proxy.
"""
import contextlib
import functools
import importlib
import math
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch._decomp import register_decomposition
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from .backend import choose

__all__ = ['NAMESPACE', 'OPERATORS', 'Operator', 'Backend', 'Recompute', 'lazy_module', 'fx_leaf', 'empty_stats']

NAMESPACE = 'zoo'
OPERATORS: Dict[str, 'Operator'] = {}  # name -> the Operator of every public op


def empty_stats(like: torch.Tensor) -> torch.Tensor:
    """The statistics tensor of a backend that needs none (a float32 tensor of no elements)."""
    return like.new_empty(0, dtype=torch.float32)


def _unaliased(outputs: Sequence[torch.Tensor], inputs: Sequence[Any]) -> List[torch.Tensor]:
    """Operator outputs may not share memory with inputs or with each other: clone those that do."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor) and t.numel()}
    result = []
    for t in outputs:
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        result.append(t)
    return result


def _frozen(value: Any) -> Any:
    """A hashable form of a scalar argument (lists become tuples)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _no_autocast(tensors: Sequence[Any]) -> contextlib.ExitStack:
    """Autocast off for the devices of ``tensors`` while a backend runs: an operator computes in its inputs' dtypes
    (a model under torch.autocast casts them before the call), so its own matrix products must not be recast (the
    cpu backends mix float32 accumulators with products that autocast would return in bfloat16)."""
    stack = contextlib.ExitStack()
    for device_type in sorted({t.device.type for t in tensors if isinstance(t, torch.Tensor)}):
        if device_type in ('cpu', 'cuda') and torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


# the keys an ordinary call excludes (autocast off unless a torch.autocast block turns it on)
_BASE_EXCLUDE = torch._C._dispatch_tls_local_exclude_set()


def _outside_dispatch_handlers() -> contextlib.AbstractContextManager:
    """The dispatcher state of an ordinary call, while a backward runs. A TorchDispatchMode (FlopCounterMode, as
    ``tools/benchmark.py --mode train`` counts a training step's FLOPs) runs the operators it intercepts with every
    key below Python excluded, autograd and functorch's included, so the backends' backwards that differentiate a
    forward with ``torch.func.vjp`` could not run there ("Cannot access storage of TensorWrapper")."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    if not exclude.has(torch._C.DispatchKey.FuncTorchDynamicLayerFrontMode):
        return contextlib.nullcontext()
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), _BASE_EXCLUDE)


def _inductor_fallback(overload: torch._ops.OpOverload) -> None:
    """Make inductor run ``overload`` itself (a fallback kernel, as it would implicitly), never its ONNX
    decomposition. Inductor finds that decomposition in torch's global table and, wherever the ``CI`` environment
    variable is set (GitHub Actions sets ``CI=true``), refuses an implicit fallback for an operator that has one
    ("make_fallback(zoo.<op>): a decomposition exists"); an explicit fallback says it is intended, as inductor's own
    list does for ``torchvision::roi_align``. Called by the fake implementation: inductor's AOT tracing runs that
    after importing its lowerings and before lowering the graph; importing them here would cost seconds."""
    lowering = sys.modules.get('torch._inductor.lowering')
    if lowering is None or overload in lowering.lowerings:
        return
    tag = torch._library.utils.get_layout_constraint_tag(overload, with_default=True)
    lowering.make_fallback(overload, layout_constraint=lowering.tag_to_layout_constraint(tag), warn=False,
                           override_decomp=True)


def _find_proxy(value: Any) -> Optional[torch.fx.Proxy]:
    if isinstance(value, torch.fx.Proxy):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            found = _find_proxy(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _find_proxy(list(value.values()))
    return None


def fx_leaf(fn: Callable) -> Callable:
    """Under torch.fx symbolic tracing, record a call of ``fn`` as one node instead of tracing into it."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        proxy = _find_proxy((args, kwargs))
        if proxy is not None:
            return proxy.tracer.create_proxy('call_function', wrapper, args, kwargs)
        return fn(*args, **kwargs)
    return wrapper


class Backend:
    """A backend of an operator from its two functions (module docstring); ``backward`` None: not differentiable."""

    def __init__(self, forward: Callable, backward: Optional[Callable] = None):
        self.forward, self.backward = forward, backward


class _Lazy:
    """A backend imported at its first use (the triton modules: the package imports without triton)."""

    def __init__(self, module: str, attr: Optional[str]):
        self._module, self._attr = module, attr

    def __getattr__(self, name: str) -> Any:
        target = importlib.import_module(self._module)
        return getattr(target if self._attr is None else getattr(target, self._attr), name)

    def __repr__(self) -> str:
        return f'lazy_module({self._module!r}, {self._attr!r})'


def lazy_module(module: str, attr: Optional[str] = None) -> Any:
    """The backend ``module`` (or ``module.attr``), imported when an attribute is first read."""
    return _Lazy(module, attr)


class Recompute:
    """A backend from a plain differentiable PyTorch function ``fn(**arguments) -> output or tuple``: forward runs
    it (no statistics), backward recomputes it under torch.func.vjp."""

    def __init__(self, fn: Callable, differentiable: Sequence[str], n_stats: int = 1):
        self.fn, self.differentiable, self.n_stats = fn, tuple(differentiable), n_stats

    def _outputs(self, **kwargs) -> Tuple[torch.Tensor, ...]:
        out = self.fn(**kwargs)
        return out if isinstance(out, tuple) else (out,)

    def forward(self, **kwargs) -> Any:
        outputs = [o.contiguous() for o in self._outputs(**kwargs)]
        if self.n_stats == 0 and len(outputs) == 1:
            return outputs[0]
        return (*outputs, *[empty_stats(outputs[0]) for _ in range(self.n_stats)])

    def backward(self, grads: Sequence[Optional[torch.Tensor]], outputs: Sequence[torch.Tensor],
                 needs: Mapping[str, bool], **kwargs) -> List[Optional[torch.Tensor]]:
        names = [n for n in self.differentiable if kwargs[n] is not None and needs[n]]

        def fn(*primals):
            return self._outputs(**dict(kwargs, **dict(zip(names, primals))))

        out, vjp = torch.func.vjp(fn, *[kwargs[n] for n in names])
        cotangents = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(out, grads))
        found = dict(zip(names, vjp(cotangents)))
        return [found.get(n) for n in self.differentiable]


def _schema_types(schema: str) -> List[Tuple[str, str]]:
    parsed = torch._C.parse_schema(f'{NAMESPACE}::x{schema} -> ()')
    return [(a.name, str(a.type)) for a in parsed.arguments]


class Operator:
    """The forward and backward operators of one public op (module docstring).

    Args:
        name: the op's name (``zoo::<name>``).
        schema: the forward schema without the name and without the trailing backend argument, e.g.
            ``'(Tensor q, Tensor k, Tensor v, int window_h, float scale) -> (Tensor, Tensor)'``; its outputs are
            ``n_outputs`` results followed by statistics tensors.
        differentiable: the tensor arguments gradients flow to, in the order backends return them.
        n_outputs: the leading outputs that are results (the rest are statistics).
        backends: 'reference', 'cpu', 'triton' -> backend objects (module docstring).
        triton_limit: ``(**arguments) -> None or the limit`` the Triton kernels exceed (see backend.select).
        fake: ``(backend name, **arguments) -> outputs`` on fake tensors, as that backend returns them.
        decomposition: ``(**arguments) -> outputs`` in standard PyTorch ops (for ONNX export).
        gradients: ``(**arguments) -> names`` of the differentiable arguments that get a gradient (default: those
            that are not None); the others get none, on every backend and in the fake backward alike.
    """

    def __init__(self, name: str, schema: str, differentiable: Sequence[str], n_outputs: int,
                 backends: Dict[str, Any], triton_limit: Callable[..., Optional[str]], fake: Callable[..., tuple],
                 decomposition: Optional[Callable[..., tuple]] = None,
                 gradients: Optional[Callable[..., Sequence[str]]] = None):
        self.name, self.backends, self.triton_limit = name, backends, triton_limit
        OPERATORS[name] = self
        self.differentiable, self.n_outputs = tuple(differentiable), n_outputs
        args, returns = schema.rsplit('->', 1)
        args = args.strip()[:-1] + ', str backend)'
        self.arguments = [n for n, _ in _schema_types(args)]
        self.tensors = [n for n, t in _schema_types(args) if t in ('Tensor', 'Optional[Tensor]')]
        scalars = ', '.join(f'{_schema_arg(t)} {n}' for n, t in _schema_types(args)
                            if t not in ('Tensor', 'Optional[Tensor]'))
        self._fake = fake
        self._stats_shapes: Dict[tuple, List[Tuple[int, ...]]] = {}  # argument shapes -> statistics shapes
        self._decomposition = decomposition
        self._gradients = gradients

        self.forward_op = torch.library.custom_op(f'{NAMESPACE}::{name}', self._forward_impl, mutates_args=(),
                                                  schema=f'{args} -> {returns.strip()}')
        self.forward_op.register_fake(self._forward_fake)
        register_flop_formula(getattr(getattr(torch.ops, NAMESPACE), name), get_raw=True)(self._forward_flops)
        if self.differentiable:
            self.backward_op = torch.library.custom_op(
                f'{NAMESPACE}::{name}_backward', self._backward_impl, mutates_args=(),
                schema=f'(Tensor?[] grads, Tensor?[] inputs, Tensor[] outputs, bool[] needs, {scalars}) -> Tensor[]')
            self.backward_op.register_fake(self._backward_fake)
            register_flop_formula(getattr(getattr(torch.ops, NAMESPACE), f'{name}_backward'),
                                  get_raw=True)(self._backward_flops)
            self.forward_op.register_autograd(self._autograd_backward, setup_context=self._setup_context)
        else:  # integer results (region_topk): nothing flows back
            self.forward_op.register_autograd(lambda ctx, *grads: (None,) * len(self.arguments),
                                              setup_context=lambda ctx, inputs, output: None)
        self.triton_forward_op = self.triton_backward_op = None
        if 'triton' in backends:
            self._register_triton(args, returns, scalars)
        if decomposition is not None:
            overload = getattr(getattr(torch.ops, NAMESPACE), name).default
            register_decomposition(overload)(self._decompose)
            # FakeTensor prefers a Python decomposition to the fake implementation for symbolic shapes, unless the
            # op has a meta function: this one is the fake implementation, so compile and export keep its exact
            # shapes and strides (the decomposition is for ONNX export only)
            register_decomposition(overload, type='meta')(self._forward_fake)

    def _register_triton(self, args: str, returns: str, scalars: str) -> None:
        """``zoo::<name>_triton`` (and its backward): the module docstring. The schemas are the first two's, so
        the autograd glue is shared; their fake implementations are the Triton launchers themselves, traced."""
        name = f'{NAMESPACE}::{self.name}_triton'
        self.triton_forward_op = torch.library.triton_op(name, self._triton_forward, mutates_args=(),
                                                         schema=f'{args} -> {returns.strip()}')
        register_flop_formula(getattr(getattr(torch.ops, NAMESPACE), f'{self.name}_triton'),
                              get_raw=True)(self._forward_flops)
        if self.differentiable:
            self.triton_backward_op = torch.library.triton_op(
                f'{name}_backward', self._triton_backward, mutates_args=(),
                schema=f'(Tensor?[] grads, Tensor?[] inputs, Tensor[] outputs, bool[] needs, {scalars}) -> Tensor[]')
            self.triton_forward_op.register_autograd(
                functools.partial(self._autograd_backward, backward_op=self.triton_backward_op),
                setup_context=self._setup_context)
        else:
            self.triton_forward_op.register_autograd(lambda ctx, *grads: (None,) * len(self.arguments),
                                                     setup_context=lambda ctx, inputs, output: None)
        if self._decomposition is not None:  # ONNX export of a model on CUDA: as the first operator
            overload = getattr(getattr(torch.ops, NAMESPACE), f'{self.name}_triton').default
            register_decomposition(overload)(self._decompose)
            register_decomposition(overload, type='meta')(self._triton_forward)

    # --- the backend rule ---------------------------------------------------------------------------------------
    def backend(self, kwargs: Dict[str, Any]) -> Tuple[str, Any]:
        """(name, object) of the backend that runs these arguments."""
        tensors = [kwargs[n] for n in self.tensors if kwargs[n] is not None]
        name = choose(self.name, tensors, lambda: self.triton_limit(**kwargs), requested=kwargs['backend'])
        return name, self.backends[name]

    def _runs_triton(self, kwargs: Dict[str, Any]) -> bool:
        """Whether the rule picks the Triton backend: checked only where it can (CUDA tensors, or triton asked for
        explicitly), so a CPU call, traced or not, never evaluates more of the rule than a device check."""
        if self.triton_forward_op is None or kwargs['backend'] not in ('auto', 'triton'):
            return False
        tensors = [kwargs[n] for n in self.tensors if kwargs[n] is not None]
        if kwargs['backend'] == 'auto' and not (tensors and all(t.is_cuda for t in tensors)):
            return False
        return self.backend(kwargs)[0] == 'triton'

    def __call__(self, **kwargs) -> tuple:
        """Run the forward operator (its Triton form where the rule picks triton); returns its results (without
        the statistics)."""
        op = self.triton_forward_op if self._runs_triton(kwargs) else self.forward_op
        outputs = op(*[kwargs[n] for n in self.arguments])
        return tuple(outputs[:self.n_outputs]) if isinstance(outputs, (tuple, list)) else (outputs,)

    # --- forward ------------------------------------------------------------------------------------------------
    def _kwargs(self, args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return dict(zip(self.arguments, args), **(kwargs or {}))

    def _forward_impl(self, *args):
        kwargs = self._kwargs(args)
        _, backend = self.backend(kwargs)
        kwargs.pop('backend')
        with _no_autocast(args):
            outputs = backend.forward(**kwargs)
        if isinstance(outputs, torch.Tensor):
            return _unaliased([outputs], args)[0]
        return tuple(_unaliased(self._flat_stats(outputs), args))

    def _triton_forward(self, *args):
        """The Triton backend's forward, traceable (``zoo::<name>_triton``): its launchers allocate the outputs
        and launch the kernels through wrap_triton; nothing here reads tensor data or addresses."""
        kwargs = self._kwargs(args)
        kwargs.pop('backend')
        outputs = self.backends['triton'].forward(**kwargs)
        if isinstance(outputs, torch.Tensor):
            return outputs
        return tuple(self._flat_stats(outputs))

    def _forward_fake(self, *args, **kwargs):
        if self._decomposition is not None:
            _inductor_fallback(self.forward_op._opoverload)
        kwargs = self._kwargs(args, kwargs)
        name, _ = self.backend(kwargs)
        kwargs.pop('backend')
        outputs = self._fake(name, **kwargs)
        if isinstance(outputs, torch.Tensor):
            return outputs
        # new 1-D tensors rather than reshape(-1), whose contiguity check would guard on the size-1 dims
        return (*outputs[:self.n_outputs], *[t.new_empty((t.numel(),)) for t in outputs[self.n_outputs:]])

    def _flat_stats(self, outputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The results as the backend returns them and the statistics flattened to 1-D. A statistics dim that is 1
        at a traced example size (a BiFormer region of one token, one scan chunk) would otherwise pin that size:
        torch's contiguity checks of traced outputs guard on size-1 dims, and torch.export turns the guard into a
        runtime assertion of the exported program. The backward gets them back in the backend's shapes."""
        return [*outputs[:self.n_outputs], *[t.reshape(-1) for t in outputs[self.n_outputs:]]]

    def _backend_outputs(self, name: str, kwargs: Dict[str, Any],
                         outputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The forward's outputs with the statistics in the shapes the backend made them (see :meth:`_flat_stats`):
        those of its fake implementation (on fake copies of real arguments, allocating nothing)."""
        stats = outputs[self.n_outputs:]
        if not stats:
            return list(outputs)
        tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        if any(isinstance(t, (FakeTensor, FunctionalTensor)) or t.is_meta for t in tensors):
            shapes = [t.shape for t in self._fake(name, **kwargs)[self.n_outputs:]]
        else:
            key = (name, *[(tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else _frozen(v)
                           for v in kwargs.values()])
            shapes = self._stats_shapes.get(key)
            if shapes is None:
                with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                    fake = self._fake(name, **{k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
                                               for k, v in kwargs.items()})
                shapes = [tuple(t.shape) for t in fake[self.n_outputs:]]
                if len(self._stats_shapes) >= 256:
                    self._stats_shapes.clear()
                self._stats_shapes[key] = shapes
        # a backend may leave a statistic empty where its fake describes one (a fallback path that recomputes in
        # backward): that one goes back as it came
        return [*outputs[:self.n_outputs],
                *[t.view(shape) if t.numel() == math.prod(shape) else t for t, shape in zip(stats, shapes)]]

    def _forward_flops(self, *args, out_val=None, **kwargs) -> int:
        kwargs = self._kwargs(args, kwargs)
        name, backend = self.backend(kwargs)
        kwargs.pop('backend')
        if name in ('cpu', 'triton'):
            # the cpu backend's PyTorch products on meta copies: what a native loop or a Triton kernel computes
            backend = self.backends['cpu']
            kwargs = {k: v.to('meta') if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with FlopCounterMode(display=False) as counter:
            backend.forward(**kwargs)
        return counter.get_total_flops()

    def _backward_flops(self, grads, inputs, outputs, needs, *scalars, out_val=None) -> int:
        kwargs = self._backward_kwargs(inputs, scalars)
        name, backend = self.backend(kwargs)
        kwargs.pop('backend')
        outputs = self._backend_outputs(name, kwargs, outputs)
        with _outside_dispatch_handlers(), FlopCounterMode(display=False) as counter:
            backend.backward(list(grads), outputs, dict(zip(self.differentiable, needs)), **kwargs)
        return counter.get_total_flops()

    def _decompose(self, *args, **kwargs):
        kwargs = self._kwargs(args, kwargs)
        kwargs.pop('backend')
        outputs = self._decomposition(**kwargs)
        n_stats = len(self.forward_op._opoverload._schema.returns) - self.n_outputs
        if n_stats == 0:
            return outputs
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return (*outputs, *[empty_stats(outputs[0]) for _ in range(n_stats)])

    # --- backward -----------------------------------------------------------------------------------------------
    def _scalars(self, kwargs: Dict[str, Any]) -> List[Any]:
        return [kwargs[n] for n in self.arguments if n not in self.tensors]

    def _backward_kwargs(self, inputs, scalars) -> Dict[str, Any]:
        kwargs = dict(zip(self.tensors, inputs))
        kwargs.update(zip([n for n in self.arguments if n not in self.tensors], scalars))
        return kwargs

    def _present(self, kwargs: Dict[str, Any], needs: Sequence[bool]) -> List[bool]:
        """Which differentiable arguments get a gradient (needed, given, and not excluded by ``gradients``)."""
        given = (set(self._gradients(**kwargs)) if self._gradients is not None
                 else {n for n in self.differentiable if kwargs[n] is not None})
        return [need and name in given for name, need in zip(self.differentiable, needs)]

    def _backward_impl(self, grads, inputs, outputs, needs, *scalars):
        kwargs = self._backward_kwargs(inputs, scalars)
        present = self._present(kwargs, needs)
        name, backend = self.backend(kwargs)
        kwargs.pop('backend')
        backend_outputs = self._backend_outputs(name, kwargs, outputs)
        with _outside_dispatch_handlers(), _no_autocast([*grads, *inputs, *outputs]):
            result = backend.backward(list(grads), backend_outputs, dict(zip(self.differentiable, needs)), **kwargs)
        return _unaliased(self._gradient_outputs(result, kwargs, present, outputs[0].device),
                          [*grads, *inputs, *outputs])

    def _gradient_outputs(self, result, kwargs, present, device) -> List[torch.Tensor]:
        """A backend's gradients as the backward operators return them: one tensor per differentiable argument
        (zeros for a wanted None, an empty tensor where none is wanted)."""
        return [(torch.zeros_like(kwargs[n]) if g is None else g.contiguous()) if p else torch.empty(0, device=device)
                for n, g, p in zip(self.differentiable, result, present)]

    def _triton_backward(self, grads, inputs, outputs, needs, *scalars):
        """The Triton backend's backward, traceable (``zoo::<name>_triton_backward``); as :meth:`_backward_impl`."""
        kwargs = self._backward_kwargs(inputs, scalars)
        present = self._present(kwargs, needs)
        kwargs.pop('backend')
        backend_outputs = self._backend_outputs('triton', kwargs, outputs)
        result = self.backends['triton'].backward(list(grads), backend_outputs, dict(zip(self.differentiable, needs)),
                                                  **kwargs)
        return self._gradient_outputs(result, kwargs, present, outputs[0].device)

    def _backward_fake(self, grads, inputs, outputs, needs, *scalars):
        kwargs = self._backward_kwargs(inputs, scalars)
        present = self._present(kwargs, needs)
        return [kwargs[n].new_empty(kwargs[n].shape) if p else torch.empty(0, device=outputs[0].device)
                for n, p in zip(self.differentiable, present)]

    def _setup_context(self, ctx, inputs, output):
        kwargs = self._kwargs(inputs)
        ctx.save_for_backward(*[kwargs[n] for n in self.tensors], *output)
        ctx.scalars = self._scalars(kwargs)
        ctx.n_inputs = len(self.tensors)

    def _autograd_backward(self, ctx, *grads, backward_op=None):
        saved = ctx.saved_tensors
        inputs, outputs = saved[:ctx.n_inputs], saved[ctx.n_inputs:]
        index = {n: i for i, n in enumerate(self.arguments)}
        needs = [bool(ctx.needs_input_grad[index[n]]) for n in self.differentiable]
        backward_op = backward_op or self.backward_op
        result = backward_op(list(grads[:self.n_outputs]), list(inputs), list(outputs), needs, *ctx.scalars)
        kwargs = self._backward_kwargs(inputs, ctx.scalars)
        by_name = {n: g for n, g, p in zip(self.differentiable, result, self._present(kwargs, needs)) if p}
        return tuple(by_name.get(n) for n in self.arguments)


def _schema_arg(type_str: str) -> str:
    """The schema spelling of a parsed argument type (int, float, bool, str, int[], ...)."""
    return {'List[int]': 'int[]', 'Optional[int]': 'int?', 'Optional[float]': 'float?',
            'List[bool]': 'bool[]', 'SymInt': 'SymInt', 'List[SymInt]': 'SymInt[]'}.get(type_str, type_str)
