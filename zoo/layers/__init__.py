"""Building blocks shared by two or more families (and not already in timm.layers)."""
from .pvt import init_pvt_weights, rename_pvt_key
from .stages import StagedClassifierMixin, StagedFeaturesMixin, StagedModelMixin
from .tracing import fx_leaf, graph_constant, is_tracing, pad_bottom_right, pad_to_multiple, resample_pos_embed

__all__ = ['init_pvt_weights', 'rename_pvt_key', 'StagedClassifierMixin', 'StagedFeaturesMixin', 'StagedModelMixin',
           'fx_leaf', 'graph_constant', 'is_tracing', 'pad_bottom_right', 'pad_to_multiple', 'resample_pos_embed']
