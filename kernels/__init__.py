"""Fused ops for the zoo's models. Imports torch (and triton lazily), never zoo."""
from .backend import BACKENDS, requested_backend, resolve_backend, select, triton_available, use_backend
from .neighborhood import neighborhood_attention
from .routing import region_topk, routed_attention, sparse_attention
from .selective_scan import selective_scan
from .window import window_attention

__all__ = ['BACKENDS', 'requested_backend', 'resolve_backend', 'select', 'triton_available', 'use_backend',
           'neighborhood_attention', 'region_topk', 'routed_attention', 'selective_scan', 'sparse_attention',
           'window_attention']
