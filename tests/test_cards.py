from pathlib import Path

import pytest
import timm

from zoo.cards import family_models, load_facts, measure, render_card

CARDS = Path(__file__).resolve().parents[1] / 'model_cards'
FACTS = sorted((CARDS / 'facts').glob('*.yaml'))


def test_every_family_has_facts_and_a_card():
    families = {f.stem for f in FACTS}
    assert families == {p.stem for p in CARDS.glob('*.md')}
    modules = {timm.models.model_entrypoint(n).__module__.rsplit('.', 1)[-1] for n in timm.list_models('zoo_*')}
    assert modules == families, 'every zoo family needs model_cards/facts/<family>.yaml'


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
