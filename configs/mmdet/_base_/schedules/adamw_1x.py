# The 1x schedule: 12 epochs, lr x0.1 after epochs 8 and 11, 500 iterations of linear warm-up (mmdet 3.3.0's
# configs/_base_/schedules/schedule_1x.py), with AdamW as the transformer backbones' authors train it, for 8 GPUs x 2
# images. Leaf configs set lr, weight_decay and paramwise_cfg as their authors did.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))

# lr scaling by total batch size (--cfg-options auto_scale_lr.enable=True); the reported runs used 8 GPUs x 2 images
auto_scale_lr = dict(enable=False, base_batch_size=16)
