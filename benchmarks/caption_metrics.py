"""Time the COCO caption metrics on N generated captions with 5 references each (default N = 5,000), per step.

    python benchmarks/caption_metrics.py            # 5,000 images of ShapeScenes
    python benchmarks/caption_metrics.py --record   # ... and append the result to benchmarks/RESULTS.md

Candidates are fresh captions of each image's scene (what a good captioner would write); the references are the
5 captions of the data set. Target (issue 5): at most 60 s in total. SPICE is timed only if its jars are installed.
"""
import argparse
import datetime
import platform
import random
import tempfile
import time
import warnings
from pathlib import Path

from mmkt_lib.core import load_json
from mmkt_lib.data import PRESETS, make_shape_scenes
from mmkt_lib.scenes import make_captions
from mmkt_lib.metrics import caption_metrics, spice_missing_jars


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=5000)
    ap.add_argument('--record', action='store_true')
    args = ap.parse_args()
    cfg, rng = PRESETS['default'], random.Random(123)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / 'shapes'
        make_shape_scenes(root, 0, args.n, 0, seed=0)
        ann = root / 'annotations' / 'captions_val.json'
        scenes = load_json(root / 'scenes_val.json')['scenes']
        results = []
        for s in scenes:
            objs = [{'shape': o['shape'], 'color': o['color'], 'size': o['size'], 'x': o['pixel_coords'][0],
                     'y': o['pixel_coords'][1], 'r': o['radius']} for o in s['objects']]
            results.append({'image_id': s['image_id'], 'caption': make_captions(objs, cfg, rng)[0]})
        timings = {}
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            scores = caption_metrics(ann, results, timings=timings)
        total = time.perf_counter() - t
    print({k: round(v, 3) for k, v in scores.items()})
    for w in caught: print('warning:', str(w.message)[:120])
    steps = ', '.join(f"{k} {v:.1f} s" for k, v in timings.items() if not (k == 'SPICE' and spice_missing_jars()))
    spice = 'SPICE skipped (jars missing)' if spice_missing_jars() else ''
    line = (f"| {datetime.date.today()} | caption_metrics | {args.n} captions x 5 references | total {total:.1f} s: {steps}"
            f"{'; ' + spice if spice else ''} | {platform.machine()}, {__import__('os').cpu_count()} cores |")
    print(line)
    if args.record:
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f: f.write(line + '\n')


if __name__ == '__main__':
    main()
