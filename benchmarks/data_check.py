"""Time `check_data` (chapter 02b) on the demo's data root: headers only (what `mmkt train` runs before training) and
with every image decoded (what `mmkt data check` runs), each after a warm-up pass so that the files are in the page cache.

    python benchmarks/data_check.py                     # data/shapes, generated if missing (10,000 / 1,000 / 1,000)
    python benchmarks/data_check.py --data data/coco    # any root in the COCO / VQA v2 formats
"""
import argparse
import cProfile
import io
import pstats
import time

from mmkt_lib.data import make_shape_scenes
from mmkt_lib.datacheck import check_data, format_report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', default='data/shapes')
    ap.add_argument('--profile', action='store_true', help='print where the header-only check spends its time')
    args = ap.parse_args()
    if args.data == 'data/shapes':
        make_shape_scenes(args.data, 10000, 1000, 1000, seed=0)
    check_data(args.data, decode=True)                                  # warm-up: page cache
    for decode in (False, True):
        t = time.perf_counter()
        rep = check_data(args.data, decode=decode, max_words=46)
        print(f"decode={decode}: {time.perf_counter() - t:.2f} s")
    print(format_report(rep))
    if args.profile:
        pr = cProfile.Profile()
        pr.runcall(check_data, args.data, decode=False)
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats('cumtime').print_stats(12)
        print(s.getvalue())


if __name__ == '__main__':
    main()
