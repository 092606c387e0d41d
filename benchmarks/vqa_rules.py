"""Rescore saved VQA predictions under both official rule sets ('master', the default, and '2017'), and time them.

    python benchmarks/vqa_rules.py runs            # every vqa_{split}_results.json under runs/, both rule sets

Each results file is scored against the annotations of the run's data set (`data` and the split from the nearest
`config.yaml` above it). Prints one line per file whose accuracy differs between the rule sets, then a summary:
how many files were rescored, how many differ, and the seconds per 10,000 questions for each rule set.
"""
import argparse
import re
import time
from pathlib import Path

import yaml

from mmkt_lib.data import vqa_paths
from mmkt_lib.metrics import VQA_RULES, vqa_accuracy


def _data_root(results: Path) -> Path | None:
    "The `data` of the nearest run config above `results`."
    for d in results.parents:
        if (d / 'config.yaml').is_file():
            return Path(yaml.safe_load((d / 'config.yaml').read_text())['data'])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('roots', nargs='+', help='directories searched for vqa_{split}_results.json')
    args = ap.parse_args()
    n, differ, seconds, questions = 0, 0, dict.fromkeys(VQA_RULES, 0.0), 0
    for f in sorted(p for r in args.roots for p in Path(r).rglob('vqa_*_results.json')):
        data, split = _data_root(f), re.fullmatch(r'vqa_(.+)_results\.json', f.name).group(1)
        if data is None or not vqa_paths(data, split)[1].is_file():
            print(f"{f}: skipped (no run config or annotations for split {split!r})")
            continue
        acc = {}
        for rules in VQA_RULES:
            t = time.perf_counter()
            out = vqa_accuracy(*vqa_paths(data, split), f, per_question=True, rules=rules)
            seconds[rules] += time.perf_counter() - t
            acc[rules] = out['overall']
        questions += len(out['per_question'])
        n += 1
        if len(set(acc.values())) > 1:
            differ += 1
            print(f"{f}: " + ', '.join(f"{k} {v:.2f}" for k, v in acc.items()))
    print(f"{n} results files rescored, {differ} with different accuracy under the two rule sets")
    if questions:
        print('seconds per 10,000 questions (loading included): '
              + ', '.join(f"{k} {10_000 * s / questions:.2f}" for k, s in seconds.items()))


if __name__ == '__main__':
    main()
