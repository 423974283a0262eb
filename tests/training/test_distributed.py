"""Evaluation and loss reporting under real DDP: two gloo processes on the CPU against single-process figures."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from zoo.training.data import create_loader
from zoo.training.engine import evaluate, sync_batchnorm_stats, train_one_epoch

WORLD = 2
NUM_IMAGES = 15  # odd: a padding sampler would count one image twice


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(NUM_IMAGES, 3, 8, 8, generator=g), torch.randint(0, 3, (NUM_IMAGES,), generator=g))


def set_rank_stats(model: nn.Module, rank: int) -> None:
    """Statistics of this process's own (as after training on its own batches)."""
    model.bn.running_mean.fill_(rank + 1.)
    model.bn.running_var.fill_(2. * (rank + 1))


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = BNNet()
        ddp = DistributedDataParallel(model)
        data, device = dataset(), torch.device('cpu')
        updates = []
        # lr 0: the weights stay as they are, so the parent can recompute each process's losses
        train_loader = create_loader(data, 2, is_training=True, seed=0, distributed=True)
        train = train_one_epoch(
            ddp, train_loader, torch.optim.SGD(ddp.parameters(), 0.), nn.CrossEntropyLoss(), device, 0, 0,
            on_update=lambda n, loss, lr: updates.append(loss), distributed=True)
        val_loader = create_loader(data, 4, is_training=False, distributed=True)
        results = {'train_loss': train['loss'], 'updates': updates, 'shard': list(val_loader.sampler)}
        for mode in ('reduce', 'broadcast'):
            set_rank_stats(model, rank)
            sync_batchnorm_stats(ddp, mode)
            metrics = evaluate(ddp, val_loader, device, 3, distributed=True)
            results[mode] = {k: metrics[k] for k in ('loss', 'top1', 'count')}
            results[mode]['bn'] = model.bn.running_mean.clone(), model.bn.running_var.clone()
        torch.save(results, os.path.join(out, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_ddp_evaluation_and_losses_match_a_single_process(tmp_path):
    """Before: each process evaluated with its own BatchNorm statistics, the validation sampler padded the shards
    (16 images counted for 15), and rank 0 reported its own training loss."""
    mp.spawn(_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(WORLD)]
    data = dataset()
    assert sorted(i for r in results for i in r['shard']) == list(range(NUM_IMAGES))  # every image once

    torch.manual_seed(0)
    model = BNNet()
    for mode, (mean, var) in (('reduce', (1.5, 3.)), ('broadcast', (1., 2.))):
        model.bn.running_mean.fill_(mean)
        model.bn.running_var.fill_(var)
        expected = evaluate(model, create_loader(data, 4, is_training=False), torch.device('cpu'), 3)
        for r in results:
            assert torch.equal(r[mode]['bn'][0], model.bn.running_mean), mode
            assert torch.equal(r[mode]['bn'][1], model.bn.running_var), mode
            assert r[mode]['count'] == expected['count'] == NUM_IMAGES
            assert abs(r[mode]['top1'] - expected['top1']) < 1e-9, mode
            assert abs(r[mode]['loss'] - expected['loss']) < 1e-6 * expected['loss'], mode

    # training losses: each update's, and the epoch's, averaged over the processes on every process
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    per_rank = []
    for rank in range(WORLD):
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=0, drop_last=True)
        batches = [list(sampler)[i:i + 2] for i in range(0, len(sampler) - 1, 2)]
        with torch.no_grad():
            per_rank.append([loss_fn(model(data.tensors[0][b]), data.tensors[1][b]).item() for b in batches])
    expected_updates = [sum(losses) / WORLD for losses in zip(*per_rank)]
    expected_epoch = sum(sum(losses) for losses in per_rank) / sum(len(losses) for losses in per_rank)
    for r in results:
        assert len(r['updates']) == len(expected_updates) == 3
        assert all(abs(a - b) < 1e-6 for a, b in zip(r['updates'], expected_updates)), (r['updates'], expected_updates)
        assert abs(r['train_loss'] - expected_epoch) < 1e-6
