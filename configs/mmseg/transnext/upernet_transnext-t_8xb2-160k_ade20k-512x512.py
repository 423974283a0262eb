# UperNet 160k on ADE20K (512x512 crops) with TransNeXt-Tiny (zoo_transnext_tiny, the authors' ImageNet-1k weights).
# Reported: 51.1 mIoU (single scale), DaiShiResearch/TransNeXt segmentation/upernet/README.md, TransNeXt-Tiny, 160K;
# the authors' config: segmentation/upernet/configs/upernet_transnext_tiny_512x512_160k_ade20k_ss.py (8 GPUs x 2).
# Backbone as theirs: position bias laid out for 512 from the 224 pre-training (interpolation), drop path 0.4;
# sliding-window test (512 crops, stride 341).
# Optimizer as the authors': AdamW, lr 6e-5, betas (0.9, 0.999), weight decay 0.05, none on the query embedding,
# local position bias, CPB, temperature and norms; linear warm-up 1500 iterations, then poly (power 1).
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_transnext_tiny',
        img_size=512,
        pretrain_size=224,
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    decode_head=dict(in_channels=[72, 144, 288, 576]),
    auxiliary_head=dict(in_channels=288),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

optim_wrapper = dict(
    optimizer=dict(lr=0.00006, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'query_embedding': dict(decay_mult=0.),
        'relative_pos_bias_local': dict(decay_mult=0.),
        'cpb': dict(decay_mult=0.),
        'temperature': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
