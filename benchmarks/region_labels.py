"""Does a tower that knows, per patch, what object covers it make the VQA stage learn faster?

    # the demo's image tower trained alone to name, for every 8 x 8 patch, the shape / colour / size of the object
    # covering it (or background) and where that object's centre lies, from the scene files:
    OMP_NUM_THREADS=1 python benchmarks/region_labels.py --steps 600 --out runs/region/r600
    # then the VQA stage from that tower (benchmarks/oracle_tokens.py, --visual loads the tower's weights):
    OMP_NUM_THREADS=1 python benchmarks/oracle_tokens.py --tokens tower --visual runs/region/r600/visual.pt \
        --readout query --loss ce --steps 1000 --eval-every 250 --out runs/oracle/region600_ce1000_query

The supervision is what a detector trained on object and attribute classes gives a VQA model's image features in
bottom-up top-down attention (Anderson et al. 2018, "Bottom-up and top-down attention for image captioning and visual
question answering", whose Faster R-CNN learns Visual Genome's objects and attributes): here dense, one label per
patch, read by linear heads so that each token must hold its object's attributes where a question's attention can read
them. The oracle runs (`oracle_tokens.py`) measure what tokens holding exactly that are worth.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmkt_lib.core import load_json
from mmkt_lib.data import CLIP_MEAN, CLIP_STD
from mmkt_lib.regions import ConvStem, flip_labels, patch_labels, scene_vocab
from mmkt_lib.vit import load_scene_images

class RegionHeads(nn.Module):   # the offset-only heads RESULTS measured (the library's add the centre in the image)
    "Linear heads on each patch token: shape, colour, size (each with a background class) and the centre offset."
    def __init__(self, dim: int, vocab: dict):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, len(vocab[a]) + 1) for a in ('shape', 'color', 'size'))
        self.offset = nn.Linear(dim, 2)

    def forward(self, tokens):                                                    # (B, N, D)
        return [h(tokens) for h in self.heads], self.offset(tokens)


def region_loss(heads_out, lab, grid_xy):
    "Cross-entropy of the three attribute heads on every patch; L1 of the centre offset on object patches."
    logits, off = heads_out
    lab = lab.flatten(1, 2)                                                       # (B, N, 5)
    ce = sum(F.cross_entropy(l.flatten(0, 1), lab[..., j].flatten()) for j, l in enumerate(logits)) / 3
    obj = lab[..., 0] > 0                                                         # (B, N)
    target = lab[..., 3:5].float() / 100 - grid_xy                                 # (B, N, 2) centre - patch centre
    l1 = F.smooth_l1_loss(off[obj], target[obj]) if obj.any() else off.sum() * 0
    return ce + l1, logits


def train(args, overrides):
    from mmkt_lib.config import load_config
    from mmkt_lib.pipeline import Pipeline, vqa_model
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(args.config, ['stages=[vqa]', 'device=cpu', 'pseudo_label=0', f'data={args.data}',
                                    f'out={args.out}', *overrides])
    p = Pipeline(cfg, verbose=False)
    tower = vqa_model(p.pre, len(p.vocab)).clip.visual
    if args.stem == 'conv':   # chapter 10c's convolutional stem (three 3x3 stride-2 convolutions for patch 8)
        tower.patch_embed = ConvStem(tower.cfg.dim, tower.cfg.patch_size)
    vocab = scene_vocab(cfg.preset)
    size, patch = cfg.image_size, cfg.patch_size
    g = size // patch
    data = {}
    for split in (cfg.train_split, cfg.val_split):
        t0 = time.time()
        imgs, _ = load_scene_images(p.data, split)
        scenes = load_json(Path(p.data) / f'scenes_{split}.json')['scenes']
        lab = torch.stack([patch_labels(s, vocab, size, patch) for s in scenes])
        data[split] = (imgs, lab)
        print(f'{split}: {len(imgs)} images, labels in {time.time() - t0:.0f} s', flush=True)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    norm = lambda u8: (u8.float() / 255 - mean) / std
    ys, xs = torch.meshgrid(torch.arange(g) + 0.5, torch.arange(g) + 0.5, indexing='ij')
    grid_xy = torch.stack([xs, ys], -1).flatten(0, 1)                             # (N, 2) patch centres
    heads = RegionHeads(tower.cfg.dim, vocab)
    params = list(tower.named_parameters()) + list(heads.named_parameters())
    opt = torch.optim.AdamW([{'params': [q for _, q in params if q.ndim >= 2], 'weight_decay': cfg.weight_decay},
                             {'params': [q for _, q in params if q.ndim < 2], 'weight_decay': 0.0}], lr=args.lr)
    warm = max(1, int(cfg.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / (args.steps - warm))))
    imgs, lab = data[cfg.train_split]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def tokens(x): return tower.forward_features(x)[:, 1:]                        # (B, N, D) patch tokens

    @torch.no_grad()
    def validate():
        tower.eval()
        vi, vl = data[cfg.val_split]
        hit, ohit = torch.zeros(3), torch.zeros(3)
        n = no = 0
        for i in range(0, len(vi), 250):
            logits, _ = heads(tokens(norm(vi[i:i + 250])))
            l = vl[i:i + 250].flatten(1, 2)                                       # (b, N, 6)
            obj = l[..., 0] > 0
            for j in range(3): hit[j] += (logits[j].argmax(-1) == l[..., j])[obj].sum()
            n += obj.sum()
            for k in range(1, l[..., 5].max() + 1):                               # per object: mean of its patches
                sel = (l[..., 5] == k).float()                                    # (b, N)
                has = sel.sum(1) > 0
                for j in range(3):
                    mean = (logits[j] * sel[..., None]).sum(1) / sel.sum(1).clamp(min=1)[:, None]
                    truth = (l[..., j] * sel.long()).amax(1)
                    ohit[j] += (mean.argmax(-1) == truth)[has].sum()
                no += has.sum()
        tower.train()
        names = ('shape', 'color', 'size')
        return {**{a: round(100 * (h / n).item(), 1) for a, h in zip(names, hit)},
                **{f'object_{a}': round(100 * (h / no).item(), 1) for a, h in zip(names, ohit)}}

    curve, t0, step = [], time.time(), 0
    while step < args.steps:
        for idx in torch.randperm(len(imgs)).split(cfg.batch_size):
            if len(idx) < cfg.batch_size: continue
            x, y = imgs[idx], lab[idx]
            m = torch.rand(len(idx)) < cfg.hflip
            if m.any():
                fx, fy = x[m].flip(-1), flip_labels(y[m])
                x, y = x.clone(), y.clone()
                x[m], y[m] = fx, fy
            loss, _ = region_loss(heads(tokens(norm(x))), y, grid_xy)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([q for _, q in params], cfg.clip_grad)
            opt.step()
            sched.step()
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                curve.append({'step': step, 'seconds': round(time.time() - t0), 'loss': round(loss.item(), 4),
                              **validate()})
                print(curve[-1], flush=True)
            if step >= args.steps: break
    torch.save(tower.state_dict(), out / 'visual.pt')
    (out / 'curve.json').write_text(json.dumps({'args': vars(args), 'overrides': overrides, 'curve': curve}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--config', default='shapes_demo')
    ap.add_argument('--stem', choices=('patch', 'conv'), default='patch')
    ap.add_argument('--steps', type=int, default=600)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--data', default='data/shapes')
    ap.add_argument('--out', required=True)
    args, extra = ap.parse_known_args()
    train(args, extra)


if __name__ == '__main__':
    main()
