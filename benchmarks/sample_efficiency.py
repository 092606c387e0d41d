"""Sample efficiency of the VQA stage: validation VQA accuracy against training steps and CPU-seconds, per model variant.

    # one variant (the VQA stage alone, from random weights, the demo's data and optimiser settings):
    python benchmarks/sample_efficiency.py train --variant patch-sincos --steps 900 --eval-every 150 --out runs/se/patch
    # several runs -> one figure and a markdown table:
    python benchmarks/sample_efficiency.py plot runs/se/* --figure benchmarks/sample_efficiency.png

Variants (the image tower's stem and positions; everything else is mmkt_lib/configs/shapes_default.yaml):
- `patch-learned`: 8x8 patches, learned positions initialised at std 0.02 (ViT / CLIP)
- `patch-sincos`:  8x8 patches, fixed 2-D sine-cosine positions (the demo's default)
- `conv-sincos`:   a convolutional stem (three 3x3 stride-2 convolutions, 24/48/96 channels, GroupNorm, GELU, then a
                   1x1 projection; Xiao et al. 2021, "Early convolutions help transformers see better")
- `deepconv-sincos`: four 3x3 convolutions (32/64/96/96, the first at stride 1): a 17-pixel receptive field per token,
                   so every ShapeScenes object (at most 18 pixels across) lies inside one token's view
`--norm-tokens` normalises every image token at the tower's output (as timm does) rather than the pooled one only
(as CLIP does), so the fusion's keys and values start from normalised tokens.
Extra `key=value` arguments override the configuration (e.g. `lr=3e-3 batch_size=32`).
Each run writes the trainer's `metrics.jsonl` (training loss, validation VQA every --eval-every steps, seconds) and
`final_val.json` (per family) into --out. Run two at once with OMP_NUM_THREADS=1 each on a 2-core machine.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

VARIANTS = ('patch-learned', 'patch-sincos', 'conv-sincos', 'deepconv-sincos')


class ConvStem(nn.Module):
    "3x3 convolutions (GroupNorm, GELU) down to the patch grid, then a 1x1 projection to the token width."
    def __init__(self, dim: int, patch: int, chans=(24, 48, 96), first_stride: int = 2):
        super().__init__()
        layers, c = [], 3
        for co, st in zip(chans, [first_stride] + [2] * (len(chans) - 1)):
            layers += [nn.Conv2d(c, co, 3, st, 1, bias=False), nn.GroupNorm(1, co), nn.GELU()]
            c = co
        self.net = nn.Sequential(*layers, nn.Conv2d(c, dim, 1))
        self.patch_size = patch

    def grid(self, h, w): return h // self.patch_size, w // self.patch_size

    def forward(self, x): return self.net(x).flatten(2).transpose(1, 2)    # (B, N, D)


def train(args, overrides):
    from mmkt_lib.config import load_config
    from mmkt_lib.data import vqa_paths
    from mmkt_lib.metrics import vqa_accuracy
    from mmkt_lib.pipeline import Pipeline
    from mmkt_lib.vqa import vqa_predictions
    stem, pos = args.variant.split('-')
    cfg = load_config('shapes_default', [f'data={args.data}', 'stages=[vqa]', 'device=cpu', 'pseudo_label=0',
                                         f'steps.vqa={args.steps}', f'eval_every={args.eval_every}', f'out={args.out}',
                                         f'pos_embed={pos}', 'log_every=50', *overrides])
    p = Pipeline(cfg)
    v = p.pre.clip.visual
    if stem == 'conv':
        v.patch_embed = ConvStem(v.cfg.dim, v.cfg.patch_size)
    elif stem == 'deepconv':
        v.patch_embed = ConvStem(v.cfg.dim, v.cfg.patch_size, (32, 64, 96, 96), first_stride=1)
    if args.norm_tokens:
        v.cfg.final_norm = 'tokens'
    p.train()
    ds, col = p.vqa_data(cfg.val_split, False)
    preds = vqa_predictions(p.vqa, DataLoader(ds, batch_size=64, collate_fn=col), p.vocab)
    acc = vqa_accuracy(*vqa_paths(p.data, cfg.val_split), preds)
    variant = args.variant + ('+norm' if args.norm_tokens else '')
    (Path(args.out) / 'final_val.json').write_text(json.dumps({'variant': variant, 'overrides': overrides, **acc}))
    print(args.variant, acc['overall'], acc['per_family'])


def _curve(run: Path):
    rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    secs = {r['step']: r['seconds'] for r in rows if 'seconds' in r}
    evals = [(r['step'], r['val_vqa']) for r in rows if 'val_vqa' in r]
    # seconds are logged every 50 steps; an evaluation step shares its step with a logging step
    return [(s, secs.get(s), a) for s, a in evals]


def plot(args):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    print('| run | variant, overrides | val VQA at steps (seconds) | final val VQA per family |')
    print('|---|---|---|---|')
    for run in map(Path, args.runs):
        fin = json.loads((run / 'final_val.json').read_text())
        label = ' '.join([fin.get('variant', run.name), *fin.get('overrides', [])])
        c = _curve(run)
        axs[0].plot([s for s, _, _ in c], [a for _, _, a in c], marker='o', label=label)
        axs[1].plot([t for _, t, _ in c], [a for _, _, a in c], marker='o', label=label)
        pts = ', '.join(f'{a:.1f} @ {s} ({t:.0f} s)' for s, t, a in c)
        fam = ', '.join(f'{k} {v:.1f}' for k, v in sorted(fin['per_family'].items()))
        print(f"| {run.name} | {label} | {pts} | {fin['overall']:.1f}: {fam} |")
    for ax, xl in zip(axs, ('optimiser steps (64 images x 5 questions)', 'seconds (one thread, incl. validation)')):
        ax.set_xlabel(xl)
        ax.set_ylabel('validation VQA accuracy (%)')
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=7)
    fig.suptitle('VQA stage from random weights, ShapeScenes 10,000 training images')
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    print(f'figure: {args.figure}')


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest='cmd', required=True)
    t = sub.add_parser('train')
    t.add_argument('--variant', choices=VARIANTS, default='patch-sincos')
    t.add_argument('--data', default='data/shapes')
    t.add_argument('--steps', type=int, default=900)
    t.add_argument('--eval-every', type=int, default=150)
    t.add_argument('--out', required=True)
    t.add_argument('--norm-tokens', action='store_true')
    t.add_argument('--threads', type=int, default=None)
    pl = sub.add_parser('plot')
    pl.add_argument('runs', nargs='+')
    pl.add_argument('--figure', default='benchmarks/sample_efficiency.png')
    args, extra = ap.parse_known_args()
    if args.cmd == 'train':
        if args.threads:
            torch.set_num_threads(args.threads)
        train(args, extra)
    else:
        if extra:
            sys.exit(f'unknown arguments {extra}')
        plot(args)


if __name__ == '__main__':
    main()
