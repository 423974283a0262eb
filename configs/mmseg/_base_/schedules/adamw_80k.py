# 80k iterations with AdamW under mmseg's 80k poly policy (power 0.9 down to eta_min 1e-4: with lr 1e-4 a constant
# rate, exactly what PVT-style Semantic FPN configs such as LITv2's ran under mmseg 0.x; mmsegmentation 1.2.2's
# configs/_base_/schedules/schedule_80k.py for the loops and hooks). Leaf configs set lr and weight_decay as their
# authors did, and the batch (the reported runs: 8 GPUs x 2 images).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.0001),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
