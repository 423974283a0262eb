# RetinaNet 1x on COCO with MambaOut-Tiny (zoo_mambaout_tiny, the authors' ImageNet-1k weights).
# Reported: not transcribed here. The MambaOut authors released no detection/segmentation code; their paper
# (arXiv:2405.07992) has COCO Mask R-CNN and ADE20K UperNet results, but no number is quoted in this config until it
# is checked against the paper's tables.
# Optimizer: the common transformer-backbone recipe (AdamW, lr 1e-4, weight decay 0.05, none on norms), not the
# authors'; drop path 0.2.
_base_ = [
    '../_base_/models/retinanet_zoo_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_mambaout_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[96, 192, 384, 576]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
