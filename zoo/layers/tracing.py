"""Helpers that keep the models traceable: torch.fx symbolic tracing, torch.compile and torch.export.

Shape arithmetic that branches (pad only where a size is not a multiple, a cache keyed by the map size) cannot run
on ``torch.fx`` Proxies, and under torch.export a branch on a dynamic size becomes a guard that pins it. The models
keep such code in small functions marked :func:`fx_leaf` (one node of an FX graph, called with real tensors when the
graph runs) and make it branch-free where torch.compile / torch.export trace it (:func:`pad_bottom_right`).
"""
import functools
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, resample_abs_pos_embed

from kernels.library import fx_leaf as _kernel_fx_leaf

__all__ = ['fx_leaf', 'graph_constant', 'is_tracing', 'pad_bottom_right', 'pad_to_multiple', 'resample_pos_embed']

_F = TypeVar('_F', bound=Callable[..., Any])


def fx_leaf(fn: _F) -> _F:
    """Make ``fn`` a leaf of every ``torch.fx`` symbolic trace (the kernels' :func:`kernels.library.fx_leaf`: called
    with a Proxy among its arguments it records one ``call_function`` node that calls it again when the graph runs),
    also registered with timm's ``register_notrace_function`` for timm's own tracing tools. torch.compile and
    torch.export trace through it as through any function."""
    return register_notrace_function(_kernel_fx_leaf(fn))


def graph_constant(maxsize: int) -> Callable[[_F], _F]:
    """For a function that builds constant tensors (index tables, geometry) from sizes and, last, a device: in eager
    mode its results are cached per arguments and built as ordinary tensors (no autograd history, also when first
    asked for inside inference_mode: autograd may save them later); under torch.compile / torch.export, where the
    sizes may be symbolic, built in the graph at every call; one node of an FX graph."""
    def decorate(build: _F) -> _F:
        @functools.lru_cache(maxsize=maxsize)
        def cached(*args):
            with torch.inference_mode(False), torch.no_grad():
                return build(*args)

        @functools.wraps(build)
        def get(*args):
            if is_tracing():
                with torch.no_grad():
                    return build(*args)
            return cached(*args[:-1], torch.device(args[-1]))
        return fx_leaf(get)
    return decorate


def is_tracing() -> bool:
    """True under torch.compile / torch.export tracing (dynamo), where shapes may be symbolic."""
    return torch.compiler.is_compiling()


def pad_to_multiple(size: int, multiple: int) -> int:
    """The padding that takes ``size`` to the next multiple of ``multiple``: ``ceil(size / multiple) * multiple -
    size``, written as a floor division of non-negative numbers. Equal to ``(-size) % multiple``, but the form that
    symbolic shapes simplify (the conv or pool after the pad then has a plain ``ceil`` output size; with the ``%``
    form torch.export spends minutes on the nested expressions of a deep model) and that ONNX export translates
    exactly (it takes a floor division of a negative number as a truncating one)."""
    return (size + multiple - 1) // multiple * multiple - size


@fx_leaf
def pad_bottom_right(x: torch.Tensor, pad_h: int, pad_w: int, channels_last: bool = False) -> torch.Tensor:
    """Zero-pad the last two spatial dims of ``x`` (NCHW, or NHWC with ``channels_last``) by ``pad_h`` rows at the
    bottom and ``pad_w`` columns at the right. Eager: returns ``x`` itself when both are 0 (no copy). Under
    torch.compile / torch.export it always pads (a pad of 0 is exact), so no guard pins a dynamic size."""
    if not is_tracing() and not pad_h and not pad_w:
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h))


@fx_leaf
def resample_pos_embed(pos_embed: torch.Tensor, new_size: Sequence[int], old_size: Sequence[int],
                       **kwargs) -> torch.Tensor:
    """timm's ``resample_abs_pos_embed`` (``kwargs``: its options) as one node of an FX graph, since it compares the
    sizes. It returns ``pos_embed`` itself at the same size, except under torch.export, where it always resamples
    (at the same size the bicubic resampling is the identity) so that no guard pins a dynamic size."""
    return resample_abs_pos_embed(pos_embed, new_size=list(new_size), old_size=list(old_size), **kwargs)
