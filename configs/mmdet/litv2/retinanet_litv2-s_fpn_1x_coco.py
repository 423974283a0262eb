# RetinaNet 1x on COCO with LITv2-S (zoo_litv2_small, the authors' ImageNet-1k weights).
# Reported: 44.0 box AP (COCO val2017), ziplab/LITv2 detection/README.md, table "RetinaNet", LITv2-S, window size 2;
# the authors' config: detection/configs/litv2/retinanet_litv2_s_fpn_1x_coco.py.
# Optimizer as the authors ran it: AdamW, lr 1e-4, weight decay 1e-4. (Their config passes paramwise_cfg={'norm': ...}
# outside `custom_keys`, which mmcv 1.x's optimizer constructor ignores, so no parameter was exempt from decay.)
# They trained in fp16: add --amp on GPUs.
_base_ = [
    '../_base_/models/retinanet_zoo_fpn.py',
    '../_base_/datasets/coco_detection.py',
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

optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.0001))
