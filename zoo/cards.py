"""Model cards, rendered from the code's own metadata and a small facts file per family.

What the code knows (the variants, their pretrained tags and weight sources, preprocessing, licenses,
registered checksums, parameters and MACs measured at the default input size) comes from the models
themselves; what it cannot know (the paper, reported results and where they were reported, notes, the
citation) comes from ``model_cards/facts/<family>.yaml``. A test keeps the committed cards in step.
"""
import sys
from pathlib import Path
from typing import Any, Dict, List

import timm
import torch
import yaml
from timm.models import get_pretrained_cfg, model_entrypoint
from torch.utils.flop_counter import FlopCounterMode

from . import hub

__all__ = ['family_models', 'measure', 'render_card', 'load_facts']

_FACT_KEYS = {'title', 'paper', 'code', 'description', 'reported', 'notes', 'citation'}
# optional: the family's mmdet/mmseg configs and what their authors reported for them
_OPTIONAL_FACT_KEYS = {'downstream'}
_DOWNSTREAM_KEYS = {'config', 'task', 'reported', 'source'}


def family_models(family: str) -> List[str]:
    """The zoo models registered by ``zoo.models.<family>``, in the order the module registers them."""
    names = [n for n in timm.list_models('zoo_*') if model_entrypoint(n).__module__ == f'zoo.models.{family}']
    order = list(vars(sys.modules[f'zoo.models.{family}']))
    return sorted(names, key=order.index)


def measure(name: str) -> Dict[str, float]:
    """Parameters and multiply-accumulates at the default input size, counted on the meta device (no compute)."""
    cfg = get_pretrained_cfg(name)
    with torch.device('meta'):
        model = timm.create_model(name).eval()
        x = torch.empty(1, *cfg.input_size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return dict(params=sum(p.numel() for p in model.parameters()), macs=counter.get_total_flops() / 2)


def load_facts(path: Path) -> Dict[str, Any]:
    facts = yaml.safe_load(path.read_text())
    unknown, missing = set(facts) - _FACT_KEYS - _OPTIONAL_FACT_KEYS, _FACT_KEYS - set(facts)
    if unknown or missing:
        raise ValueError(f'{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; '
                         f'a facts file has exactly {sorted(_FACT_KEYS)}, optionally {sorted(_OPTIONAL_FACT_KEYS)}')
    for row in facts.get('downstream', []):
        if set(row) != _DOWNSTREAM_KEYS:
            raise ValueError(f'{path}: downstream entry {row} must have exactly the keys {sorted(_DOWNSTREAM_KEYS)}')
        if not (Path(__file__).resolve().parents[1] / row['config']).is_file():
            raise ValueError(f"{path}: downstream config {row['config']} does not exist")
    return facts


def _weight_source(cfg: Dict[str, Any]) -> str:
    if cfg.get('hf_hub_id'):
        filename = cfg.get('hf_hub_filename') or hub.DEFAULT_HF_FILENAME
        return f"Hugging Face `{cfg['hf_hub_id']}` / `{filename}`"
    return f"<{cfg['url']}>"


def _variants_table(family: str, facts: Dict[str, Any]) -> List[str]:
    reported = facts['reported']['rows']
    lines = [
        '| Model | Params (measured) | GMACs (measured) | Params (reported) | FLOPs (reported) | Top-1 % (reported) |',
        '| :--- | ---: | ---: | ---: | ---: | ---: |',
    ]
    for name in family_models(family):
        m = measure(name)
        size = 'x'.join(map(str, get_pretrained_cfg(name).input_size[1:]))
        params, flops, top1 = reported.get(name, ['—'] * 3)
        lines.append(f"| `{name}` | {m['params'] / 1e6:.2f}M | {m['macs'] / 1e9:.2f} @ {size} "
                     f'| {params} | {flops} | {top1} |')
    lines += ['', f"Reported: {facts['reported']['source']}. Measured here: parameters, and multiply-accumulates "
              'counted by `torch.utils.flop_counter` at the default input size (papers in this field call MACs '
              'FLOPs).']
    return lines


def _weights_table(family: str) -> List[str]:
    lines = [
        '| Tag | Source | License | Input | Crop | Mean / std | sha256 checked |',
        '| :--- | :--- | :--- | :--- | :--- | :--- | :--- |',
    ]
    tagged = [t for name in family_models(family) for t in timm.list_pretrained(name + '.*')]
    for tag in tagged:
        cfg = get_pretrained_cfg(tag).to_dict()
        size = 'x'.join(map(str, cfg['input_size'][1:]))
        norm = f"{tuple(round(v, 3) for v in cfg['mean'])} / {tuple(round(v, 3) for v in cfg['std'])}"
        checked = 'yes' if hub.expected_sha256(hub.weight_location(cfg)) else 'no'
        lines.append(f"| `{tag}` | {_weight_source(cfg)} | {cfg['license']} | {size} | "
                     f"{cfg['crop_pct']} {cfg['interpolation']} | {norm} | {checked} |")
    untagged = [n for n in family_models(family) if not timm.list_pretrained(n + '.*')]
    if untagged:
        lines += ['', 'No pretrained weights: ' + ', '.join(f'`{n}`' for n in untagged) + '.']
    return lines


def _downstream_section(facts: Dict[str, Any]) -> List[str]:
    rows = facts.get('downstream')
    if not rows:
        return []
    lines = [
        '## Detection and segmentation',
        '',
        'mmdet 3.x / mmsegmentation 1.x configs with `ZooBackbone` (`make mm`, see the README); train with '
        '`tools/train.py CONFIG`, evaluate with `tools/test.py CONFIG CHECKPOINT`.',
        '',
        '| Config | Task | Reported | Source of the number |',
        '| :--- | :--- | :--- | :--- |',
    ]
    for row in rows:
        lines.append(f"| [`{Path(row['config']).name}`](../{row['config']}) | {row['task']} | "
                     f"{row['reported'] or '—'} | {' '.join(str(row['source']).split())} |")
    return lines + ['']


# `make bench-plots` writes <family>.png here (in a source checkout; an installed package renders no plot section)
_BENCH = Path(__file__).resolve().parents[1] / 'model_cards' / 'bench'


def _bench_section(family: str) -> List[str]:
    if not (_BENCH / f'{family}.png').exists():
        return []
    return [
        '## Speed and memory',
        '',
        'Throughput and peak memory on the CPU against input resolution, beside the anchors named in the plot '
        '(`make bench-plots`; the plot states the machine, threads and date; every number in '
        '[bench/results.csv](bench/results.csv)):',
        '',
        f'![{family}: throughput and peak memory against resolution](bench/{family}.png)',
        '',
    ]


def render_card(family: str, facts: Dict[str, Any]) -> str:
    paper, code = facts['paper'], facts['code']
    models = family_models(family)
    first, smallest_tagged = models[0], next(
        (t for n in models for t in timm.list_pretrained(n + '.*')), models[0])
    lines = [
        f"<!-- Generated by tools/cards.py from zoo/models/{family}.py and model_cards/facts/{family}.yaml. -->",
        f"# {facts['title']}",
        '',
        f"**{paper['name']}**: {paper['authors']}" + (f", {paper['venue']}" if paper.get('venue') else '')
        + f", [arXiv:{paper['arxiv']}](https://arxiv.org/abs/{paper['arxiv']}).",
        f"Original code: [{code['repo']}](https://github.com/{code['repo']}) ({code['license']}); "
        f"{code['ported_from']}.",
        '',
        facts['description'].strip(),
        '',
        '## Usage',
        '',
        '```python',
        'import timm',
        'import zoo  # registers the zoo models with timm',
        '',
        f"model = timm.create_model('{smallest_tagged}', pretrained=True)",
        f"backbone = timm.create_model('{first}', features_only=True, out_indices=(1, 2, 3))  "
        '# NCHW, strides 8/16/32',
        '```',
        '',
        '## Variants',
        '',
        *_variants_table(family, facts),
        '',
        '## Pretrained weights',
        '',
        *_weights_table(family),
        '',
        *_downstream_section(facts),
        *_bench_section(family),
        '## Notes',
        '',
        *[f"- {' '.join(note.split())}" for note in facts['notes']],
        '',
        '## Citation',
        '',
        '```bibtex',
        facts['citation'].strip(),
        '```',
        '',
    ]
    return '\n'.join(lines)
