# UperNet 160k on ADE20K (512x512 crops) with MaxViT-T (zoo_maxvit_tiny_tf_224, the authors' ImageNet-1k
# weights as converted by timm).
# Reported: none for this framework. The MaxViT authors (google-research/maxvit, TensorFlow) released no
# mmdet/mmseg code and report COCO results with Cascade Mask R-CNN only.
# Optimizer: the Swin/UperNet recipe (AdamW, lr 6e-5, weight decay 0.01, none on norms; linear warm-up 1500
# iterations, then poly), not the authors'; drop path 0.2.
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_maxvit_tiny_tf_224',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='in1k')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
