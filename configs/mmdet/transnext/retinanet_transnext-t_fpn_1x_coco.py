# RetinaNet 1x on COCO with TransNeXt-Tiny (zoo_transnext_tiny, the authors' ImageNet-1k weights at 224).
# Reported: none; the TransNeXt authors report Mask R-CNN and DINO on COCO (see mask-rcnn_transnext-t_fpn_1x_coco.py).
# Backbone and optimizer as their Mask R-CNN config
# (detection/maskrcnn/configs/mask_rcnn_transnext_tiny_fpn_1x_coco.py): AdamW, lr 1e-4, weight decay 0.05, none
# on the query embedding, local position bias, CPB, temperature and norms.
_base_ = [
    '../_base_/models/retinanet_zoo_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_transnext_tiny',
        img_size=800,
        pretrain_size=224,
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[72, 144, 288, 576]))

optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'query_embedding': dict(decay_mult=0.),
        'relative_pos_bias_local': dict(decay_mult=0.),
        'cpb': dict(decay_mult=0.),
        'temperature': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
