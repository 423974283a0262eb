#!/usr/bin/env python
"""Convert an original authors' checkpoint into a clean zoo safetensors file.

    python tools/convert.py zoo_van_b0 van_tiny_754.pth.tar -o van_b0.safetensors
    python tools/convert.py zoo_van_b0.official_in1k van_tiny_754.pth.tar --mirror $ZOO_WEIGHTS_DIR

Prints the written path and its sha256 (and, in a mirror, the manifest that identifies the converted file:
it sits beside the original's place as <original name>.zoo.safetensors). Exits with 2 and one line naming the
unknown, missing or mis-shaped keys when the checkpoint does not fit the model.
"""
import argparse
import json
import sys
from pathlib import Path

import zoo  # noqa: F401  (registers the zoo models with timm)
from zoo.convert import ConversionError, convert_checkpoint
from zoo.hub import CorruptWeightsError, WeightsNotFoundError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='zoo model name, optionally with its pretrained tag (see zoo.list_models())')
    parser.add_argument('checkpoint', help='the original checkpoint file (.pth, .pth.tar, .bin, .safetensors)')
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument('-o', '--output', help='the safetensors file to write')
    where.add_argument('--mirror', help='a ZOO_WEIGHTS_DIR folder: write the file where the tag\'s weights go')
    parser.add_argument('--model-kwargs', default='{}', type=json.loads,
                        help='JSON kwargs for the model, e.g. \'{"num_classes": 21841}\'')
    args = parser.parse_args(argv)
    if args.output and Path(args.output).is_dir():
        parser.exit(2, f'error: -o/--output: {args.output} is a directory; give the file to write '
                       f'(e.g. {Path(args.output) / "weights.safetensors"}), or --mirror {args.output} for a mirror\n')

    try:
        result = convert_checkpoint(
            args.model, args.checkpoint, dst=args.output, mirror=args.mirror, **args.model_kwargs)
    except (ConversionError, WeightsNotFoundError, CorruptWeightsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'{result.path}  sha256 {result.sha256}  ({result.num_tensors} tensors)')
    if result.manifest is not None:
        print(f'manifest {result.manifest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
