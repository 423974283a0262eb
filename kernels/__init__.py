"""Fused ops for the zoo's models. Imports torch (and triton lazily), never zoo."""
from .backend import BACKENDS, dispatch, requested_backend, resolve_backend, triton_available, use_backend
from .window import window_attention

__all__ = ['BACKENDS', 'dispatch', 'requested_backend', 'resolve_backend', 'triton_available', 'use_backend',
           'window_attention']
