"""Time ShapeScenes generation: one split of N images (default 10,000) on one core, with a per-stage breakdown.

    python benchmarks/data_generation.py            # 10,000 training images, default preset
    python benchmarks/data_generation.py --n 9800 --preset sort_of_clevr

Target (issue 2): a 10,000-image split in at most 30 s on one core. Writes a line to benchmarks/RESULTS.md with --record.
"""
import argparse
import cProfile
import datetime
import os
import platform
import pstats
import tempfile
import time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')  # one core, as the target says

from mmkt_lib.data import make_shape_scenes  # noqa: E402
from mmkt_lib.text import data_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=10000)
    ap.add_argument('--preset', default='default')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--profile', action='store_true', help='print the 15 most expensive functions')
    ap.add_argument('--record', action='store_true', help='append the result to benchmarks/RESULTS.md')
    args = ap.parse_args()
    if hasattr(os, 'sched_setaffinity'): os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    times = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            make_shape_scenes(Path(d) / 's', args.n, 0, 0, preset=args.preset, seed=r)
            split = time.perf_counter() - t
            data_tokenizer(Path(d) / 's', verbose=False)   # the data root's tokenizer, as `mmkt data shapes` makes it
            times.append(time.perf_counter() - t)
            print(f"run {r}: split and manifest {split:.2f} s, with tokenizer {times[-1]:.2f} s")
    best = min(times)
    line = (f"| {datetime.date.today()} | data_generation | {args.preset}, {args.n} images, 1 core | "
            f"best of {args.repeats}: {best:.1f} s ({1000 * best / args.n:.2f} ms/image) | {platform.processor() or platform.machine()} |")
    print(line)
    if args.profile:
        with tempfile.TemporaryDirectory() as d:
            cProfile.runctx('make_shape_scenes(Path(d) / "p", min(args.n, 2000), 0, 0, preset=args.preset)',
                            globals(), {'d': d, 'args': args, 'Path': Path}, '/tmp/mmkt_gen.prof')
        pstats.Stats('/tmp/mmkt_gen.prof').sort_stats('tottime').print_stats(15)
    if args.record:
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f: f.write(line + '\n')


if __name__ == '__main__':
    main()
