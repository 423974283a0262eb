# UperNet 160k on ADE20K (512x512 crops) with DaViT-T (zoo_davit_tiny, Microsoft's ImageNet-1k weights).
# Reported: 46.3 mIoU, dingmyu/davit README.md, table "Semantic Segmentation on ADE20K", DaViT-T, UPerNet 160k; the
# authors' config: mmseg/configs/upernet_davit_512x512_160k_ade20k.py (8 GPUs x 2 images).
# Optimizer as the authors': AdamW, lr 6e-5, betas (0.9, 0.999), weight decay 0.01, no exemptions (their norm
# exemption is commented out); drop path 0.3; linear warm-up 1500 iterations, then poly (power 1).
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_davit_tiny',
        drop_path_rate=0.3,
        out_norms=(0, 1, 2, 3),  # as the authors' segmentation backbone (norm0-norm3)
        init_cfg=dict(type='Pretrained', checkpoint='msft_in1k')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
