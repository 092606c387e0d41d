#!/usr/bin/env python3
"""Generate ShapeScenes from the command line; the same as `mmkt data shapes`.

    python data_scripts/make_shapes.py --out data/shapes --n-train 10000 --n-val 1000 --n-test 1000
    python data_scripts/make_shapes.py --out data/sort_of_clevr --preset sort_of_clevr --n-train 9800 --n-val 200 --n-test 200
"""
import sys

from mmkt_lib.cli import main

if __name__ == '__main__':
    sys.exit(main(['data', 'shapes', *sys.argv[1:]]))
