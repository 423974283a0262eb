# Mask R-CNN 1x on COCO with VAN-B2 (zoo_van_b2, the authors' ImageNet-1k weights).
# Reported: not transcribed here. The VAN authors released no detection code; their paper (arXiv:2202.09741) has COCO
# results, but no number is quoted in this config until it is checked against the paper's table.
# Optimizer: the common transformer-backbone recipe (AdamW, lr 1e-4, weight decay 0.05, none on norms), not the
# authors' (unpublished); drop path 0.1 as their UperNet config.
_base_ = [
    '../_base_/models/mask-rcnn_zoo_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_van_b2',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
