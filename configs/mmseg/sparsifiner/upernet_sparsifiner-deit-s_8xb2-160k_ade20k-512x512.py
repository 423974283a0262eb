# UperNet 160k on ADE20K (512x512 crops) with Sparsifiner-DeiT-S (zoo_sparsifiner_deit_small).
# Reported: none. The Sparsifiner authors (lim142857/Sparsifiner) released no detection or segmentation code or
# results; the paper reports ImageNet-1k classification only.
# Backbone: blocks 2, 5, 8, 11 (the ends of the four quarters) through the adapter's simple feature pyramid (ViTDet
# style, LayerNorm in the stride-4 branch); drop path 0.1.
# Weights: no Sparsifiner weights were ever released; the 'fb_in1k' tag loads timm's DeiT-S ImageNet-1k weights into
# the backbone, and every block's connectivity predictor keeps its random initialisation (a warning says so): the keys
# it keeps (25% per query, the default keep rate) are arbitrary until trained, here by the detection/segmentation loss
# only (the authors' attention-reconstruction stage is not part of these configs).
# Optimizer: the Swin/UperNet recipe, not the authors' (none published): AdamW, lr 6e-5, weight decay 0.01, none on
# the position embedding, class token and norms; linear warm-up 1500 iterations, then poly (power 1).
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_sparsifiner_deit_small',
        block_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='fb_in1k')),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
