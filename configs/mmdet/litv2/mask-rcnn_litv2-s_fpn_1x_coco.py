# Mask R-CNN 1x on COCO with LITv2-S (zoo_litv2_small, the authors' ImageNet-1k weights).
# Reported: 44.9 box AP / 40.8 mask AP (COCO val2017), ziplab/LITv2 detection/README.md, table "Mask R-CNN", LITv2-S,
# window size 2; the authors' config: detection/configs/litv2/mask_rcnn_litv2_s_fpn_1x_coco.py.
# Optimizer as the authors': AdamW, lr 2e-4, weight decay 1e-4, none on norms. They trained in fp16: --amp on GPUs.
_base_ = [
    '../_base_/models/mask-rcnn_zoo_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_litv2_small',
        drop_path_rate=0.2,
        # the authors' detection backbone normalises the outputs of stages 2-4 (norm1-norm3)
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    optimizer=dict(lr=0.0002, weight_decay=0.0001),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
