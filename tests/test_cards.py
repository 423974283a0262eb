import subprocess
import sys
from pathlib import Path

import pytest
import timm

from zoo.cards import family_models, load_facts, measure, render_card

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / 'model_cards'
FACTS = sorted((CARDS / 'facts').glob('*.yaml'))


def test_every_family_has_facts_and_a_card():
    families = {f.stem for f in FACTS}
    assert families == {p.stem for p in CARDS.glob('*.md')}
    modules = {timm.models.model_entrypoint(n).__module__.rsplit('.', 1)[-1] for n in timm.list_models('zoo_*')}
    assert modules == families, 'every zoo family needs model_cards/facts/<family>.yaml'


@pytest.mark.parametrize('facts', FACTS, ids=lambda p: p.stem)
def test_card_links_its_speed_and_memory_plot(facts):
    """make bench-plots draws every family; the card shows its plot (and the README the overview)."""
    assert (CARDS / 'bench' / f'{facts.stem}.png').exists(), 'run make bench-plots (an idle machine)'
    assert f'](bench/{facts.stem}.png)' in (CARDS / f'{facts.stem}.md').read_text()


@pytest.mark.parametrize('facts', FACTS, ids=lambda p: p.stem)
def test_card_is_up_to_date(facts):
    card = CARDS / f'{facts.stem}.md'
    assert card.read_text() == render_card(facts.stem, load_facts(facts)), \
        f'{card.name} is out of date: run python tools/cards.py'


@pytest.mark.parametrize('facts', FACTS, ids=lambda p: p.stem)
def test_reported_rows_name_real_models(facts):
    rows = load_facts(facts)['reported']['rows']
    assert set(rows) <= set(family_models(facts.stem))


def test_measure_counts_real_parameters():
    model = timm.create_model('zoo_mambaout_femto')
    measured = measure('zoo_mambaout_femto')
    assert measured['params'] == sum(p.numel() for p in model.parameters())
    assert 1.0e9 < measured['macs'] < 1.3e9  # the authors report 1.2G MACs at 224


def test_facts_schema_is_checked(tmp_path):
    path = tmp_path / 'x.yaml'
    path.write_text('title: X\npaper: {}\nsurprise: 1\n')
    with pytest.raises(ValueError, match=r"unknown keys \['surprise'\], missing keys \['citation', 'code'"):
        load_facts(path)


# --- the command line: tools/cards.py ---------------------------------------------------------------------------

def test_cli_check_passes_on_a_committed_card():
    """One family (test_card_is_up_to_date renders every card in process)."""
    proc = subprocess.run([sys.executable, 'tools/cards.py', 'mambaout', '--check'], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'out of date: none'


def test_cli_unknown_family_is_refused():
    proc = subprocess.run([sys.executable, 'tools/cards.py', 'nope', '--check'], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and 'no facts file for nope' in proc.stderr
