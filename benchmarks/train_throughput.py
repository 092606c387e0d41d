"""Training throughput of the demo's model on this machine, stage by stage, and where a step's time goes.

    python benchmarks/train_throughput.py                   # the demo configuration (mmkt_lib/configs/shapes_demo.yaml)
    python benchmarks/train_throughput.py --config shapes_default   # the experiments' base, VQA read-out at [BOS]
    python benchmarks/train_throughput.py --steps 30 --record
    python benchmarks/train_throughput.py --stages vqa --threads 1 fusion_readout=first   # one stage, a config override

For each stage it builds the model, data set and collate function exactly as the pipeline does (`Pipeline.stage_model`,
`Pipeline.stage_data`, `STAGE_LOSSES`) and times, per step: the data (reading, decoding and transforming the batch's
images; tokenising and collating), the forward pass with the loss, the backward pass and the optimiser step (AdamW with
the trainer's parameter groups). Reports images per second of a whole step. Data: a ShapeScenes set of --n-train images
with the demo's settings (generated into a temporary directory unless --data names one).
"""
import argparse
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmkt_lib.config import STAGES, load_config
from mmkt_lib.pipeline import STAGE_LOSSES, Pipeline
from mmkt_lib.trainer import EpochSampler, param_groups


def _order(n: int, seed: int):
    "Item indices as the trainer visits them, epoch after epoch."
    sampler, epoch = EpochSampler(n, seed), 0
    while True:
        sampler.set_epoch(epoch)
        yield from sampler
        epoch += 1


def time_stage(pipe: Pipeline, stage: str, steps: int, warmup: int) -> dict:
    "Median seconds per step of data / forward / backward / optimiser, and images per second of the whole step."
    cfg = pipe.cfg
    model, loss_fn = pipe.stage_model(stage), STAGE_LOSSES[stage]
    ds, collate = pipe.stage_data(stage)
    if cfg.cache_images:   # the steady state: from the second epoch on every image is decoded already
        for i in range(len(ds)):
            ds[i]
    order = _order(len(ds), cfg.seed)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    model.train()
    rows = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        items = [ds[next(order)] for _ in range(cfg.batch_size)]
        t1 = time.perf_counter()
        batch = collate(items)
        t2 = time.perf_counter()
        loss = loss_fn(model, batch)['loss']
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if k >= warmup:
            rows.append({'items': t1 - t0, 'collate': t2 - t1, 'forward': t3 - t2, 'backward': t4 - t3,
                         'optimiser': t5 - t4})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med['step'] = sum(med.values())
    med['images_per_s'] = cfg.batch_size / med['step']
    return med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--config', default='shapes_demo')
    ap.add_argument('--data', default=None, help='a ShapeScenes root (default: generate --n-train images in a temp dir)')
    ap.add_argument('--n-train', type=int, default=1000)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    ap.add_argument('--stages', nargs='*', default=[s for s in STAGES if s != 'regions'], choices=STAGES,
                    help='the stages to time (default: all but regions)')
    ap.add_argument('--record', action='store_true', help='append the results to benchmarks/RESULTS.md')
    ap.add_argument('overrides', nargs='*', help='config overrides key=value, as `mmkt train` takes them')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        data = args.data or str(Path(d) / 'shapes')
        cfg = load_config(args.config, [f'data={data}', f"out={Path(d) / 'run'}", f'n_train={args.n_train}', 'n_val=8',
                                        'n_test=8', 'device=cpu', 'pseudo_label=0', *args.overrides])
        pipe = Pipeline(cfg, verbose=False)
        lines = []
        for stage in args.stages:
            r = time_stage(pipe, stage, args.steps, args.warmup)
            parts = ', '.join(f"{k} {1000 * r[k]:.0f}" for k in ('items', 'collate', 'forward', 'backward', 'optimiser'))
            setting = ', '.join([args.config, *args.overrides])
            line = (f"| {datetime.date.today()} | {stage} | {setting}, batch {cfg.batch_size}, "
                    f"{torch.get_num_threads()} threads | {r['images_per_s']:.1f} images/s; ms per step: {parts} | "
                    f"{platform.processor() or platform.machine()} |")
            print(line)
            lines.append(line)
    if args.record:
        with open(Path(__file__).parent / 'RESULTS.md', 'a') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
