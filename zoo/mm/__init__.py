"""mmdet 3.x / mmsegmentation 1.x integration: the only part of the zoo that imports mm* packages.

Importing ``zoo.mm`` (configs do it with ``custom_imports=dict(imports=['zoo.mm'], allow_failed_imports=False)``)
registers :class:`ZooBackbone` in mmengine's root ``MODELS`` registry (and :class:`ZooRandomStateHook` in ``HOOKS``),
where mmdet's and mmseg's registries find them,
and allows the few non-tensor objects that mmengine 0.10.7 pickles into its training checkpoints to be read back
with torch's safe loader (``weights_only=True``), so that ``resume`` works under torch >= 2.6.
"""
from .backbone import SimplePyramid, ZooBackbone
from .checkpoint import MMENGINE_SAFE_GLOBALS, allow_mmengine_checkpoints
from .families import DENSE_SPECS, DenseSpec
from .hooks import ZooRandomStateHook

allow_mmengine_checkpoints()

__all__ = ['ZooBackbone', 'SimplePyramid', 'DenseSpec', 'DENSE_SPECS', 'ZooRandomStateHook', 'MMENGINE_SAFE_GLOBALS',
           'allow_mmengine_checkpoints']
