# UperNet 160k on ADE20K (512x512 crops) with LookupViT-S/16 (zoo_lookupvit_s16).
# Reported: none. LookupViT (arXiv:2407.12753) has no official code or weights, and no COCO/ADE20K results are
# quoted here.
# Backbone: blocks 2, 5, 8, 11 (the ends of the four quarters) through the adapter's simple feature pyramid (ViTDet
# style, LayerNorm in the stride-4 branch); drop path 0.1.
# Weights: none were released (nor code): train LookupViT-S/16 on ImageNet-1k yourself (tools/train.py) and point
# `checkpoint` at the file; the compressed-token grid is the model's default 7x7 (set_compressed_size for others).
# Optimizer: the Swin/UperNet recipe, not the authors' (none published): AdamW, lr 6e-5, weight decay 0.01, none on
# the position embedding, position embedding and norms; linear warm-up 1500 iterations, then poly (power 1).
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_lookupvit_s16',
        block_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/lookupvit_s16_in1k.pth')),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
