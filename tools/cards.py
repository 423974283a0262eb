#!/usr/bin/env python
"""Regenerate model_cards/<family>.md from the code's metadata and model_cards/facts/<family>.yaml.

    python tools/cards.py            # rewrite every card
    python tools/cards.py --check    # exit 1 and name the cards that are out of date
"""
import argparse
import sys
from pathlib import Path

import zoo  # noqa: F401  (registers the zoo models with timm)
from zoo.cards import load_facts, render_card

CARDS = Path(__file__).resolve().parents[1] / 'model_cards'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('families', nargs='*', help='families to render (default: every facts file)')
    parser.add_argument('--check', action='store_true', help='write nothing; fail if a card differs')
    args = parser.parse_args(argv)

    facts_files = {p.stem: p for p in sorted((CARDS / 'facts').glob('*.yaml'))}
    unknown = sorted(set(args.families) - set(facts_files))
    if unknown:
        print(f'error: no facts file for {", ".join(unknown)}; have {", ".join(facts_files)}', file=sys.stderr)
        return 2
    stale = []
    for family in args.families or facts_files:
        card = CARDS / f'{family}.md'
        text = render_card(family, load_facts(facts_files[family]))
        if card.exists() and card.read_text() == text:
            continue
        stale.append(card.name)
        if not args.check:
            card.write_text(text)
    if args.check and stale:
        print(f'out of date: {", ".join(stale)}; run python tools/cards.py', file=sys.stderr)
        return 1
    print(f'{"out of date" if args.check else "written"}: {", ".join(stale) or "none"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
