# Mask R-CNN 1x on COCO with LookupViT-S/16 (zoo_lookupvit_s16).
# Reported: none. LookupViT (arXiv:2407.12753) has no official code or weights, and no COCO/ADE20K results are
# quoted here.
# Backbone: blocks 2, 5, 8, 11 (the ends of the four quarters) through the adapter's simple feature pyramid (ViTDet
# style, LayerNorm in the stride-4 branch); drop path 0.1.
# Weights: none were released (nor code): train LookupViT-S/16 on ImageNet-1k yourself (tools/train.py) and point
# `checkpoint` at the file; the compressed-token grid is the model's default 7x7 (set_compressed_size for others).
# Optimizer: the common transformer-backbone recipe, not the authors' (none published): AdamW, lr 1e-4, weight
# decay 0.05, none on the position embedding and norms.
_base_ = [
    '../_base_/models/mask-rcnn_zoo_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_lookupvit_s16',
        block_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/lookupvit_s16_in1k.pth')),
    neck=dict(in_channels=[384, 384, 384, 384]))

optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
