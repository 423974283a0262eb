# UperNet 160k on ADE20K (512x512 crops) with MambaOut-Tiny (zoo_mambaout_tiny, the authors' ImageNet-1k weights).
# Reported: not transcribed here. The MambaOut authors released no detection/segmentation code; their paper
# (arXiv:2405.07992) has COCO Mask R-CNN and ADE20K UperNet results, but no number is quoted in this config until it
# is checked against the paper's tables.
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
        model_name='zoo_mambaout_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    decode_head=dict(in_channels=[96, 192, 384, 576]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
