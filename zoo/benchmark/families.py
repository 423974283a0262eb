"""Every zoo family beside its anchors across resolutions: the measurements behind ``make bench-plots``.

The families come from timm's registry (every module of ``zoo.models`` that registers a ``zoo_*`` model), so
a new family joins by being registered. Each is measured with its smallest variant that has pretrained
weights, beside timm's own model of the same name where timm has one, unless
``configs/benchmarks/models/<family>.yaml`` names the model or other anchors (:func:`load_family_config`).
"""
import datetime
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch
from timm.models import model_entrypoint

from . import load
from .measure import Timer, machine_name
from .runner import Row, build_model, check_model, default_anchors, measure_models, zoo_models
from .specs import AnchorSpec, BenchmarkError, check_device_dtype, check_mode, load_family_config

__all__ = ['PLOT_RESOLUTIONS', 'FamilyPlan', 'family_names', 'smallest_pretrained', 'family_plan',
           'benchmark_families']

PLOT_RESOLUTIONS = (224, 512, 800, 1024)

_logger = logging.getLogger(__name__)


@dataclass
class FamilyPlan:
    family: str
    model: str
    anchors: List[AnchorSpec]


def _family_of(name: str) -> str:
    return model_entrypoint(name).__module__.rsplit('.', 1)[-1]


def family_names() -> List[str]:
    """The zoo's families: the ``zoo.models`` modules that register models, sorted."""
    return sorted({_family_of(n) for n in zoo_models()})


@functools.cache
def _num_params(name: str) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def smallest_pretrained(family: str) -> str:
    """The family's variant with the fewest parameters among those with pretrained weights (among all of them
    where none has weights)."""
    names = [n for n in zoo_models() if _family_of(n) == family]
    if not names:
        raise BenchmarkError(f'unknown family {family!r}; the zoo has {", ".join(family_names())}')
    with_weights = [n for n in names if timm.list_pretrained(n + '.*')]
    return min(with_weights or names, key=_num_params)


def family_plan(family: str, config_dir: Optional[str] = None) -> FamilyPlan:
    """What is measured for ``family``: the registry's defaults, overridden by ``<config_dir>/<family>.yaml``."""
    model = smallest_pretrained(family)
    path = os.path.join(config_dir, f'{family}.yaml') if config_dir else None
    config = load_family_config(path) if path and os.path.exists(path) else None
    if config and config.model:
        model = config.model
    if config and config.anchors is not None:
        anchors = config.anchors
    else:
        anchors = [AnchorSpec(name, {}) for name in default_anchors(model)]
    for name in [model, *(a.name for a in anchors)]:
        check_model(name)
    return FamilyPlan(family, model, anchors)


def benchmark_families(
        names: Optional[Sequence[str]] = None,
        config_dir: Optional[str] = None,
        resolutions: Sequence[int] = PLOT_RESOLUTIONS,
        batch_size: int = 1,
        dtype: str = 'fp32',
        device: str = 'cpu',
        mode: str = 'inference',
        runs: int = 10,
        warmup: int = 2,
        timer: Timer = time.perf_counter,
        background_load: int = 0,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> List[Row]:
    """Rows as :func:`zoo.benchmark.benchmark_models` gives, for every family (or those named) at every
    resolution, each family's model timed interleaved with its anchors; every row also names its ``family`` and
    the ``machine``, ``threads``, ``torch``/``timm`` versions and ``date`` it was measured on.

    Models are built anew for each resolution (an anchor's ``size_kwarg`` receives it). A group that fails at a
    resolution (out of memory, a size an anchor cannot take) is measured candidate by candidate, and a candidate
    that still fails gives a row with its ``error`` and no figures, so one failure does not end a long run.
    ``model_kwargs`` go to the family's model only (a quick run with small depths).
    """
    dev, torch_dtype = check_device_dtype(device, dtype)
    check_mode(mode)
    plans = [family_plan(f, config_dir) for f in (names or family_names())]
    context = dict(machine=machine_name(dev), threads=torch.get_num_threads(), torch=torch.__version__,
                   timm=timm.__version__, date=datetime.date.today().isoformat())
    rows = []
    with load.background_load(background_load):
        for plan in plans:
            for res in resolutions:
                found = _family_at(plan, res, batch_size, dtype, dev, torch_dtype, mode, runs, warmup, timer,
                                   dict(model_kwargs or {}))
                rows.extend(dict(r, family=plan.family, **context) for r in found)
    if background_load:
        for row in rows:
            row['background_load'] = background_load
    return rows


def _family_at(plan: FamilyPlan, res: int, batch_size: int, dtype: str, dev: torch.device,
               torch_dtype: torch.dtype, mode: str, runs: int, warmup: int, timer: Timer,
               model_kwargs: Dict[str, Any]) -> List[Row]:
    specs = [(plan.model, model_kwargs, 'model'), *(
        (a.name, dict(a.kwargs, **({a.size_kwarg: res} if a.size_kwarg else {})), 'anchor') for a in plan.anchors)]

    def measure(chosen):
        built = [build_model(name, kwargs, dev, torch_dtype, torch.contiguous_format, mode, None)
                 for name, kwargs, _ in chosen]
        rows = measure_models(plan.model, built, [res], batch_size, dtype, dev, torch_dtype, mode, False, None,
                              runs, warmup, timer)
        for row, (_, _, role) in zip(rows, chosen):
            row['role'] = role
        return rows

    try:
        return measure(specs)
    except Exception as e:  # one candidate's failure must not end the sweep
        _logger.warning(f'{plan.family} at {res}px failed together ({e}); measuring each candidate alone')
    rows = []
    for spec in specs:
        try:
            alone = measure([spec])
        except Exception as e:
            _logger.warning(f'{spec[0]} at {res}px failed: {e}')
            rows.append(dict(name=spec[0], role=spec[2], group=plan.model, kind='model', mode=mode, dtype=dtype,
                             resolution=res, batch_size=batch_size, device=str(dev), throughput=None,
                             error=f'{type(e).__name__}: {e}'))
            continue
        for row in alone:
            row['rel_throughput'] = None if spec[2] == 'anchor' else 1.0
        rows.extend(alone)
    return rows
