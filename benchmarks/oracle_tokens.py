"""Is the image tower the bottleneck of the VQA stage? The same stage trained with perfect image tokens.

    # the VQA stage from random weights with the image tower replaced by oracle object tokens (one token per object,
    # made from the scene file: one-hot shape / colour / size and the centre's x, y), everything else the library's:
    OMP_NUM_THREADS=1 python benchmarks/oracle_tokens.py --tokens oracle --steps 300 --out runs/oracle/o300
    # the real tower in the same loop, for comparison:
    OMP_NUM_THREADS=1 python benchmarks/oracle_tokens.py --tokens tower --steps 300 --out runs/oracle/t300
    # options: --readout mean|meanfirst|query (the fusion read out as the mean of its text states, its first
    # position started from the mean of the text states, or the library's `fusion_readout=query`: one pooled
    # question vector that attends over the image), --positions sincos (an oracle
    # token's place as 2-D sines and cosines), --stem conv (the tower with sample_efficiency.py's convolutional stem),
    # --loss ce (softmax cross-entropy on the normalised soft scores instead of the library's soft-score BCE), --lr,
    # --eval-every, --only TEMPLATE...; extra key=value arguments override mmkt_lib/configs/shapes_default.yaml
    python benchmarks/oracle_tokens.py table runs/oracle/*
    python benchmarks/oracle_tokens.py templates runs/oracle/*     # per question template, last validation
    python benchmarks/oracle_tokens.py plot benchmarks/oracle_tokens.png runs/oracle/*

An oracle token is what an ideal perception module would hand the fusion: each object's attributes, exactly, and
where it lies. If the question side (text encoder, fusion, answer head, optimiser) learned as fast as it should, the
oracle run would answer almost everything within a few hundred steps; how far it falls short measures the part of the
problem that no better image tower can fix. The training loop is the trainer's recipe written out (AdamW with weight
decay on matrices only, 10% linear warm-up then cosine to zero, gradient norm clipped at `clip_grad`, batches of 64
images x 5 questions), so that the oracle can be fed the image ids the model's forward pass does not see.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from mmkt_lib.fusion import _masked_mean
from mmkt_lib.scenes import PRESETS

MAX_OBJECTS = 5      # ShapeScenes' default preset
FREQS = (1, 2, 4, 8)


def scene_vocab(preset: str = 'default') -> tuple:
    "(shapes, colours, sizes, image size) of a ShapeScenes preset: the order of an oracle token's one-hot parts."
    c = PRESETS[preset]
    return tuple(c.shapes), tuple(c.colors), tuple(c.sizes), c.image_size


def feature_dim(vocab: tuple, sincos: bool = False) -> int:
    return sum(map(len, vocab[:3])) + (4 * len(FREQS) if sincos else 2)


def object_features(obj: dict, vocab: tuple = scene_vocab(), sincos: bool = False) -> torch.Tensor:
    """One-hot shape, colour and size (3 + 6 + 2 in the default preset), then the centre's x and y in [-0.5, 0.5]
    (13 values), or with `sincos` sines and cosines of x and y at four frequencies (11 + 16 values), as the tower's 2-D
    positions are."""
    shapes, colors, sizes, image_size = vocab
    f = torch.zeros(len(shapes) + len(colors) + len(sizes))
    f[shapes.index(obj['shape'])] = 1
    f[len(shapes) + colors.index(obj['color'])] = 1
    f[len(shapes) + len(colors) + sizes.index(obj['size'])] = 1
    xy = torch.tensor(obj['pixel_coords'][:2]) / image_size - 0.5                         # (2,)
    if not sincos:
        return torch.cat([f, xy])
    ang = torch.pi * xy[:, None] * torch.tensor(FREQS, dtype=torch.float)[None]           # (2, 4)
    return torch.cat([f, ang.sin().flatten(), ang.cos().flatten()])


class OracleTower(nn.Module):
    """Stands in for the image tower: `forward_features` returns (B, 1 + max_objects, D) tokens, a learned first
    token, one token per object (an MLP of its exact features) and learned filler tokens for the missing objects. The
    image ids of the batch are set in `ids` before each forward pass."""
    def __init__(self, scenes: list, dim: int = 96, sincos: bool = False, vocab: tuple = scene_vocab()):
        super().__init__()
        self.table = {s['image_id']: torch.stack([object_features(o, vocab, sincos) for o in s['objects']])
                      for s in scenes}
        self.max_objects = max(len(t) for t in self.table.values())
        self.proj = nn.Sequential(nn.Linear(feature_dim(vocab, sincos), dim), nn.GELU(), nn.Linear(dim, dim))
        self.filler = nn.Parameter(torch.randn(1 + self.max_objects, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.ids = None

    def forward_features(self, images):
        out = []
        for i in self.ids.tolist():
            t = self.proj(self.table[i])                                                    # (n, D)
            out.append(torch.cat([self.filler[:1], t, self.filler[1:1 + self.max_objects - len(t)]], 0))
        return self.norm(torch.stack(out))                                                  # (B, 1+n, D)


def _subset(qpath, apath, qids: set, out: Path):
    "The questions and annotations files restricted to `qids`, written under `out`."
    paths = []
    for path, key in ((qpath, 'questions'), (apath, 'annotations')):
        d = json.loads(Path(path).read_text())
        d[key] = [x for x in d[key] if x['question_id'] in qids]
        paths.append(out / Path(path).name)
        paths[-1].write_text(json.dumps(d))
    return paths


class MeanReadout(nn.Module):
    "A fusion read out as the mean of its text states over the real tokens, instead of at one position."
    def __init__(self, fusion: nn.Module):
        super().__init__()
        self.inner, self.cfg = fusion, fusion.cfg

    def forward(self, image_tokens, text_tokens, text_mask=None, image_index=None, return_attn=False,
                pooled_only=False):
        out = self.inner(image_tokens, text_tokens, text_mask, image_index, return_attn, pooled_only=False)
        return {**out, 'pooled': _masked_mean(out['tokens'], text_mask)}                     # (Q, D)


class MeanFirst(nn.Module):
    """A fusion whose first text position (the one it reads out) starts from the mean of the question's text states
    rather than from [BOS], whose state a causal encoder makes the same for every question."""
    def __init__(self, fusion: nn.Module):
        super().__init__()
        self.inner, self.cfg = fusion, fusion.cfg

    def forward(self, image_tokens, text_tokens, text_mask=None, image_index=None, return_attn=False,
                pooled_only=False):
        mean = _masked_mean(text_tokens, text_mask)[:, None]                                 # (Q, 1, D)
        text = torch.cat([mean, text_tokens[:, 1:]], 1)
        return self.inner(image_tokens, text, text_mask, image_index, return_attn, pooled_only)


def scale_cross_attention(model: nn.Module, s: float):
    "Multiply the query projection of every `CrossAttention` in `model` by `s`: attention logits s times larger."
    from mmkt_lib.fusion import CrossAttention
    for m in model.modules():
        if isinstance(m, CrossAttention): m.q.register_forward_hook(lambda mod, inp, out: out * s)


def soft_ce(logits, targets):
    "Softmax cross-entropy against the soft scores normalised to a distribution."
    t = targets / targets.sum(1, keepdim=True).clamp_min(1e-6)
    return -(t * logits.float().log_softmax(-1)).sum(1).mean()


def train(args, overrides):
    from mmkt_lib.config import load_config
    from mmkt_lib.core import load_json
    from mmkt_lib.data import vqa_paths
    from mmkt_lib.metrics import vqa_accuracy
    from mmkt_lib.pipeline import Pipeline, vqa_model
    from mmkt_lib.vqa import vqa_loss
    torch.set_num_threads(args.threads)
    query = ['fusion_readout=query'] * (args.readout == 'query')   # the library's pooled question (chapter 07)
    cfg = load_config(args.config, ['stages=[vqa]', 'device=cpu', 'pseudo_label=0', f'data={args.data}',
                                         f'out={args.out}', *query, *overrides])
    p = Pipeline(cfg, verbose=False)
    model = vqa_model(p.pre, len(p.vocab))
    if args.tokens == 'oracle':
        scenes = [s for split in (cfg.train_split, cfg.val_split)
                  for s in load_json(Path(p.data) / f'scenes_{split}.json')['scenes']]
        model.clip.visual = OracleTower(scenes, model.clip.cfg.vision.dim, args.positions == 'sincos',
                                        scene_vocab(cfg.preset))
    elif args.stem == 'conv':   # sample_efficiency.py's convolutional stem (three 3x3 stride-2 convolutions)
        sys.path.insert(0, str(Path(__file__).parent))
        from sample_efficiency import ConvStem
        v = model.clip.visual
        v.patch_embed = ConvStem(v.cfg.dim, v.cfg.patch_size)
    if args.visual:   # a tower trained elsewhere (region_labels.py)
        model.clip.visual.load_state_dict(torch.load(args.visual))
    if args.readout == 'mean':
        model.fusion = MeanReadout(model.fusion)
    elif args.readout == 'meanfirst':
        model.fusion = MeanFirst(model.fusion)
    if args.logit_scale != 1.0:
        scale_cross_attention(model.fusion, args.logit_scale)
    ds, col = p.vqa_data(cfg.train_split, True)
    vds, vcol = p.vqa_data(cfg.val_split, False)
    if args.only:   # train and validate on these question templates alone
        for d in (ds, vds):
            keep = [[q for q in qs if d.annotations[q['question_id']]['template'] in args.only] for qs in d.questions]
            d.image_ids, d.questions = zip(*[(i, qs) for i, qs in zip(d.image_ids, keep) if qs])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=col, drop_last=True)
    params = list(model.named_parameters())
    opt = torch.optim.AdamW([{'params': [q for _, q in params if q.ndim >= 2], 'weight_decay': cfg.weight_decay},
                             {'params': [q for _, q in params if q.ndim < 2], 'weight_decay': 0.0}], lr=args.lr)
    warm = max(1, int(cfg.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / (args.steps - warm))))
    loss_fn = soft_ce if args.loss == 'ce' else vqa_loss

    def forward(b):
        if args.tokens == 'oracle': model.clip.visual.ids = b['image_ids']
        return model(b['images'], b['input_ids'], b['attention_mask'], b['image_index'])

    @torch.no_grad()
    def validate():
        model.eval()
        preds = [{'question_id': int(q), 'answer': p.vocab.itos[a]}
                 for b in DataLoader(vds, batch_size=64, collate_fn=vcol)
                 for q, a in zip(b['question_ids'].tolist(), forward(b).argmax(-1).tolist())]
        model.train()
        (out / 'val_predictions.json').write_text(json.dumps(preds))
        qp, ap_ = vqa_paths(p.data, cfg.val_split)
        if args.only: qp, ap_ = _subset(qp, ap_, {int(x['question_id']) for x in preds}, out)
        return vqa_accuracy(qp, ap_, preds)

    step, t0, curve = 0, time.time(), []
    while step < args.steps:
        for b in loader:
            loss = loss_fn(forward(b), b['targets'])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                acc = validate()
                curve.append({'step': step, 'seconds': round(time.time() - t0), 'val_vqa': round(acc['overall'], 2),
                              **{k: round(v, 1) for k, v in acc['per_family'].items()}})
                print(curve[-1], flush=True)
                (out / 'curve.json').write_text(json.dumps({'args': vars(args), 'overrides': overrides,
                                                            'curve': curve}, indent=1))
            if step >= args.steps: break


def table(runs):
    runs = [r for r in map(Path, runs) if (r / 'curve.json').is_file()]
    curves = [json.loads((run / 'curve.json').read_text()) for run in runs]
    fams = sorted({k for r in curves for k in r['curve'][-1]} - {'step', 'seconds', 'val_vqa'})
    print('| run | tokens, loss, steps, overrides | val VQA at step (seconds in all) | '
          f"last: {' / '.join(fams)} |")
    print('|---|---|---|---|---|')
    for run, r in zip(runs, curves):
        a, c = r['args'], r['curve']
        pts = ', '.join(f"{e['val_vqa']:.1f} @ {e['step']}" for e in c) + f" ({c[-1]['seconds']} s)"
        last = ' / '.join(f"{c[-1][f]:.1f}" if f in c[-1] else '-' for f in fams)
        kind = f"{a.get('stem', 'patch')} stem" if a['tokens'] == 'tower' else f"{a.get('positions', 'xy')} positions"
        kind += {'mean': ', mean read-out', 'meanfirst': ', first position from the mean',
                 'query': ', question pooled first (fusion_readout=query)'}.get(a.get('readout'), '')
        tok = f"{a['tokens']} ({kind})"
        lr, scale, only = a.get('lr', 1e-3), a.get('logit_scale', 1), a.get('only') or []
        config = a.get('config', 'shapes_default')
        extra = [f"`--config {config}`"] * (config != 'shapes_default') + [f"lr {lr:g}"] * (lr != 1e-3) + [f"logit scale {scale:g}"] * (scale != 1) + [
            f"`--only {' '.join(only)}`"] * bool(only)
        opts = ' '.join([*r['overrides'], *extra])
        print(f"| {run.name} | {tok}, {a['loss']}, {a['steps']} {opts} | {pts} | {last} |")


def templates(runs, split='val'):
    """Accuracy (% exact matches of the most common answer) per question template of each run's last validation; the
    runs must share one data root."""
    runs = [r for r in map(Path, runs) if (r / 'val_predictions.json').is_file() and (r / 'curve.json').is_file()]
    roots = {json.loads((r / 'curve.json').read_text())['args']['data'] for r in runs}
    if len(roots) != 1: raise SystemExit(f"templates: give runs of one data root, got {sorted(roots)}")
    data = roots.pop()
    qs = json.loads((Path(data) / f'v2_OpenEnded_shapes_{split}_questions.json').read_text())['questions']
    anns = {a['question_id']: a for a in json.loads((Path(data) / f'v2_shapes_{split}_annotations.json').read_text())[
        'annotations']}
    keys = sorted({f"{a['family']}:{a['template']}" for a in anns.values()})
    print('| run | ' + ' | '.join(keys) + ' |')
    print('|---' * (len(keys) + 1) + '|')
    for run in runs:
        pred = {p['question_id']: p['answer'] for p in json.loads((run / 'val_predictions.json').read_text())}
        hits = {k: [] for k in keys}
        for q in qs:
            if q['question_id'] not in pred: continue                                      # a run with `--only`
            a = anns[q['question_id']]
            hits[f"{a['family']}:{a['template']}"].append(pred[q['question_id']] == a['multiple_choice_answer'])
        print(f'| {run.name} | ' + ' | '.join(f'{100 * sum(h) / len(h):.1f}' if h else '-' for h in hits.values()) + ' |')


def plot(runs, figure):
    "Validation VQA against steps, overall and for the spatial family, one line per run."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    runs = [r for r in map(Path, runs) if (r / 'curve.json').is_file()]
    colours = plt.get_cmap('tab20')(range(len(runs)))                                  # distinct up to 20 runs
    for run, colour in zip(runs, colours):
        c = json.loads((run / 'curve.json').read_text())['curve']
        dash = '--' if 'tower' in run.name or 'conv' in run.name else '-'
        for ax, key in zip(axs, ('val_vqa', 'spatial')):
            ax.plot([e['step'] for e in c], [e[key] for e in c], dash, marker='o', color=colour, label=run.name)
    for ax, title in zip(axs, ('all questions', 'spatial questions')):
        ax.set_xlabel('optimiser steps (64 images x 5 questions)')
        ax.set_ylabel('validation VQA accuracy (%)')
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=7)
    fig.suptitle('VQA stage from random weights: oracle object tokens against the image tower')
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    print(f'figure: {figure}')


def main():
    if sys.argv[1:2] == ['table']:
        return table(sys.argv[2:])
    if sys.argv[1:2] == ['templates']:
        return templates(sys.argv[2:])
    if sys.argv[1:2] == ['plot']:
        return plot(sys.argv[3:], sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument('--tokens', choices=('oracle', 'tower'), default='oracle')
    ap.add_argument('--config', default='shapes_default', help='the configuration (preset) the run starts from')
    ap.add_argument('--stem', choices=('patch', 'conv'), default='patch', help='the tower\'s stem (--tokens tower)')
    ap.add_argument('--visual', default='', help="the tower's weights (a state dict, e.g. region_labels.py's)")
    ap.add_argument('--positions', choices=('xy', 'sincos'), default='xy', help='how an oracle token gives its place')
    ap.add_argument('--loss', choices=('bce', 'ce'), default='bce')
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--readout', choices=('fusion', 'mean', 'meanfirst', 'query'), default='fusion',
                    help="the fusion's own read-out, the mean of its text states, its first position started from "
                         "the mean of the text encoder's states, or cross fusion's pooled question "
                         "(fusion_readout=query, chapter 07)")
    ap.add_argument('--logit-scale', type=float, default=1.0,
                    help="multiply the queries of the fusion's cross-attentions (their logits) by this factor")
    ap.add_argument('--only', nargs='*', default=[], help='question templates to train and validate on alone')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--data', default='data/shapes')
    ap.add_argument('--out', required=True)
    args, extra = ap.parse_known_args()
    train(args, extra)


if __name__ == '__main__':
    main()
