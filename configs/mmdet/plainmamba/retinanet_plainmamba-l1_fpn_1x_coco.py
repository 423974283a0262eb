# RetinaNet 1x on COCO with PlainMamba-L1 (zoo_plainmamba_l1, the authors' ImageNet-1k weights).
# Reported: none for this config. The authors' COCO results are for PlainMamba-Adapter-L1, a ViT-Adapter-style
# backbone (a convolutional spatial prior and deformable-attention interactions at blocks 0-5, 6-11, 12-17, 18-23,
# SyncBN in the neck and heads) that the zoo does not port: 41.7 box AP (RetinaNet 1x),
# ChenhongyiYang/PlainMamba README.md, table "COCO RetinaNet 1x Schedule"; their config:
# downstream/mmdetection/plain_mamba_det_configs/retinanet/l1_retinanet_1x.py.
# Backbone here: the block outputs (the residual stream) of blocks 5, 11, 17, 23 (the authors' segmentation taps)
# through the adapter's simple feature pyramid; drop path 0.1 as theirs.
# Optimizer as the authors' detection template (plain_mamba_det_configs/template/): AdamW, lr 1e-4, weight decay 0.05,
# none on norms, biases, the position embedding and the scans' A_log, D and direction_Bs (their 'level_embed' key
# names an adapter parameter, absent here).
_base_ = [
    '../_base_/models/retinanet_zoo_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_plainmamba_l1',
        block_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'bias': dict(decay_mult=0.),
        '.A_log': dict(decay_mult=0.),
        '.D': dict(decay_mult=0.),
        '.direction_Bs': dict(decay_mult=0.)}))
