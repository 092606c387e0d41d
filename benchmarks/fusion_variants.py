"""Why does the VQA stage not learn to pick out the object a question names? Variants of the fusion, trained as the VQA
stage alone from random weights on ShapeScenes, compared by validation accuracy per family.

    # one run (one thread; two at a time on a 2-core machine):
    OMP_NUM_THREADS=1 python benchmarks/fusion_variants.py --variant cross --steps 500 --out runs/fv/cross_s0 seed=0
    # attention supervision: the answer position's cross-attention pulled onto the named object's patches
    OMP_NUM_THREADS=1 python benchmarks/fusion_variants.py --variant cross --attention-supervision 1 --out runs/fv/as0
    # a table of finished runs (validation VQA every --eval-every steps, per family at the end):
    python benchmarks/fusion_variants.py table runs/fv/*

Variants (everything else is mmkt_lib/configs/shapes_default.yaml; extra `key=value` arguments override it, e.g.
`fusion_readout=eot`, `vision_depth=0`, `seed=1`):
- `cross`:  the library's cross-attention fusion
- `sharp`:  the same with the cross-attention logits multiplied by --sharpness (a colder softmax from step 0)
- `film`:   FiLM (Perez et al. 2018): every image token modulated by the question's end-of-text state in each layer,
            related by self-attention, then read by one attention from the question (plus max-pooling)
- `deepconv`: the cross fusion over the deep convolutional stem of `sample_efficiency.py` (17-pixel receptive field)
`--attention-supervision W` adds W x the mean over layers and heads of -log(attention mass of the answer position on
the patches of the named object), for the questions whose phrase names exactly one object ("What color is the large
circle?", "Is the red square on the left or the right side of the image?"): about 27% of the training questions.
ShapeScenes' scene files say which object that is; real VQA v2 has no such labels (HINT, Selvaraju et al. 2019, uses
human attention maps for the purpose).
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mmkt_lib.fusion import CrossAttention, FusionConfig, _gather_images, _Projected, eot_first
from mmkt_lib.vit import Block, Mlp

VARIANTS = ('cross', 'sharp', 'film', 'deepconv')
_SPATIAL = re.compile(r"^is the (.+?) (on the left|in the top)")


class FilmFusion(_Projected):
    "Image tokens modulated by the question (FiLM) in every layer, related by self-attention, read by the question."
    def __init__(self, cfg: FusionConfig):
        super().__init__(cfg)                                                    # cfg, img and txt projections
        D = cfg.dim
        self.film = nn.ModuleList([nn.Linear(D, 2 * D) for _ in range(cfg.depth)])
        self.norms = nn.ModuleList([nn.LayerNorm(D, elementwise_affine=False) for _ in range(cfg.depth)])
        self.mlps = nn.ModuleList([Mlp(D, 2 * D) for _ in range(cfg.depth)])
        self.blocks = nn.ModuleList([Block(dim=D, heads=cfg.heads, mlp_ratio=2.0) for _ in range(cfg.depth)])
        for f in self.film:   # start unconditioned
            nn.init.zeros_(f.weight)
            nn.init.zeros_(f.bias)
        self.qn, self.q, self.k = nn.LayerNorm(D), nn.Linear(D, D), nn.Linear(D, D)
        self.out = nn.Sequential(nn.Linear(3 * D, D), nn.LayerNorm(D))

    def forward(self, image_tokens, text_tokens, text_mask=None, image_index=None, return_attn=False,
                pooled_only=False):
        q = self.txt(eot_first(text_tokens, text_mask)[:, 0])                             # (Q, D): end of text
        x = _gather_images(self.img(image_tokens), image_index)                           # (Q, 1+N, D)
        for k in range(self.cfg.depth):
            g, b = self.film[k](q).chunk(2, -1)                                           # (Q, D) each
            x = x + self.mlps[k](self.norms[k](x) * (1 + g[:, None]) + b[:, None])
            x, _ = self.blocks[k](x)
        a = ((self.q(self.qn(q))[:, None] * self.k(x)).sum(-1) / x.shape[-1] ** 0.5).softmax(-1)  # (Q, 1+N)
        pooled = self.out(torch.cat([(a[..., None] * x).sum(1), x.amax(1), q], -1))
        return {'tokens': pooled[:, None], 'pooled': pooled, 'attn': [a] if return_attn else None}


def sharpen(factor: float):
    "Make every `CrossAttention` multiply its logits by `factor` (explicit softmax, so the maps can be returned)."
    def forward(self, x, context, context_mask=None, return_attn=False, context_index=None):
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)               # (B, h, L, d)
        kv = self.kv(context).view(*context.shape[:2], 2, self.heads, self.head_dim)
        if context_index is not None: kv = kv.index_select(0, context_index)
        k, v = kv.permute(2, 0, 3, 1, 4)                                                   # 2 x (B, h, M, d)
        attn = ((q * (factor * self.head_dim ** -0.5)) @ k.transpose(-2, -1)).softmax(-1)  # (B, h, L, M)
        out = self.proj((attn @ v).transpose(1, 2).reshape(B, L, D))
        return self.drop(out), (attn if return_attn else None)
    CrossAttention.forward = forward


def named_patches(root, split, grid, patch) -> dict:
    "{question_id: (gh * gw,) bool} the patches of the one object a question's phrase names."
    from mmkt_lib.data import load_vqa, vqa_paths
    from mmkt_lib.probes import box_patches, named_object, scene_objects
    objs = scene_objects(root, split)
    out = {}
    for q in load_vqa(*vqa_paths(root, split))[0]:
        o = objs[q['image_id']]
        j = named_object(q['question'], o)
        if j is None and (m := _SPATIAL.match(q['question'].lower())):
            words = set(m.group(1).split())
            hits = [i for i, x in enumerate(o) if all(w in (x['size'], x['color'], x['shape'], 'object') for w in words)]
            j = hits[0] if len(hits) == 1 else None
        if j is not None: out[q['question_id']] = box_patches(o[j]['bbox'], grid, patch).flatten()
    return out


def supervised_loss(masks: dict, weight: float):
    "The VQA loss plus `weight` x the attention-supervision term on the questions in `masks`."
    from mmkt_lib.vqa import vqa_loss, vqa_soft_score

    def loss_fn(model, b):
        logits, maps = model(b['images'], b['input_ids'], b['attention_mask'], b['image_index'], return_attn=True)
        out = {'loss': vqa_loss(logits, b['targets']), 'score': vqa_soft_score(logits.detach(), b['targets'])}
        qids = b['question_ids'].tolist()
        rows = [i for i, q in enumerate(qids) if q in masks]
        if rows:
            m = torch.stack([masks[qids[i]] for i in rows]).float()                      # (S, N)
            # maps: per layer (Q, h, L, 1+N); the answer position is text position 0, patches follow the class token
            nll = [-(a[rows, :, 0, 1:] * m[:, None]).sum(-1).clamp_min(1e-6).log().mean() for a in maps]
            out['att'] = sum(nll) / len(nll)
            out['loss'] = out['loss'] + weight * out['att']
        return out
    return loss_fn


def train(args, overrides):
    import mmkt_lib.pipeline as P
    from mmkt_lib.config import load_config
    torch.set_num_threads(args.threads)
    cfg = load_config('shapes_default', [f'data={args.data}', 'stages=[vqa]', 'device=cpu', 'pseudo_label=0',
                                         f'steps.vqa={args.steps}', f'eval_every={args.eval_every}', f'out={args.out}',
                                         'log_every=50', *overrides])
    p = P.Pipeline(cfg)
    vis = p.pre.clip.visual
    if args.variant == 'film':
        p.pre.fusion = FilmFusion(p.pre.fusion.cfg)
    elif args.variant == 'sharp':
        sharpen(args.sharpness)
    elif args.variant == 'deepconv':
        sys.path.insert(0, str(Path(__file__).parent))
        from sample_efficiency import ConvStem
        vis.patch_embed = ConvStem(vis.cfg.dim, vis.cfg.patch_size, (32, 64, 96, 96), first_stride=1)
    if args.attention_supervision:
        masks = named_patches(p.data, cfg.train_split, vis.cfg.grid, vis.cfg.patch_size)
        P.STAGE_LOSSES['vqa'] = supervised_loss(masks, args.attention_supervision)
    t = time.time()
    p.train()
    r = {'variant': args.variant, 'attention_supervision': args.attention_supervision, 'overrides': overrides,
         **p.val_vqa(p.vqa), 'seconds': round(time.time() - t, 1)}
    (Path(args.out) / 'final_val.json').write_text(json.dumps(r))
    print(r)


def table(runs):
    print('| run | variant | val VQA at steps | final per family |')
    print('|---|---|---|---|')
    for run in map(Path, runs):
        fin = json.loads((run / 'final_val.json').read_text())
        rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
        curve = ', '.join(f"{r['val_vqa']:.1f} @ {r['step']}" for r in rows if 'val_vqa' in r)
        fam = ', '.join(f"{k[8:]} {v:.1f}" for k, v in sorted(fin.items()) if k.startswith('val_vqa_'))
        name = ' '.join([fin['variant'], *fin['overrides']] +
                        ([f"att-sup {fin['attention_supervision']:g}"] if fin['attention_supervision'] else []))
        print(f"| {run.name} | {name} | {curve} | {fam} |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == 'table':
        return table(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument('--variant', choices=VARIANTS, default='cross')
    ap.add_argument('--data', default='data/shapes')
    ap.add_argument('--steps', type=int, default=500)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--sharpness', type=float, default=4.0)
    ap.add_argument('--attention-supervision', type=float, default=0.0)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--out', required=True)
    args, extra = ap.parse_known_args()
    bad = [x for x in extra if '=' not in x]
    if bad: sys.exit(f'unknown arguments {bad}')
    train(args, extra)


if __name__ == '__main__':
    main()
