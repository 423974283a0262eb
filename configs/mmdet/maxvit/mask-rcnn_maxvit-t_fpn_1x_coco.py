# Mask R-CNN 1x on COCO with MaxViT-T (zoo_maxvit_tiny_tf_224, the authors' ImageNet-1k
# weights as converted by timm).
# Reported: none for this framework. The MaxViT authors (google-research/maxvit, TensorFlow) released no
# mmdet/mmseg code and report COCO results with Cascade Mask R-CNN only.
# Optimizer: the common transformer-backbone recipe (AdamW, lr 1e-4, weight decay 0.05, none on norms), not the
# authors'; drop path 0.2.
_base_ = [
    '../_base_/models/mask-rcnn_zoo_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_maxvit_tiny_tf_224',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='in1k')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
