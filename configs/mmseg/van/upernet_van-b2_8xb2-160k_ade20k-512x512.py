# UperNet 160k on ADE20K (512x512 crops) with VAN-B2 (zoo_van_b2, the authors' ImageNet-1k weights).
# Reported: 50.1 mIoU (multi-scale test), Visual-Attention-Network/VAN-Segmentation README.md, table "VAN + UperNet",
# VAN-B2, IN-1K, 160K; the authors' config: configs/upernet/1k_pretrained/upernet_van_b2_512x512_160k_ade20k.py
# (8 GPUs x 2 images).
# Optimizer as the authors': AdamW, lr 6e-5, betas (0.9, 0.999), weight decay 0.01, none on norms; drop path 0.1;
# linear warm-up 1500 iterations, then poly (power 1).
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_van_b2',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
