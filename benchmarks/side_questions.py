"""Why do perfect image tokens not answer "Is the <object> on the left or the right side of the image?"

    OMP_NUM_THREADS=1 python benchmarks/side_questions.py --query bow --out runs/side/bow.json
    # --query: bow | eot | mean | bidir | fusion | fusion_mean | cross (below); --steps, --batch, --lr
    # --logit-scale S: every library CrossAttention's queries multiplied by S (attention logits S times larger)

`oracle_tokens.py` found these questions at chance with oracle object tokens, even when trained on them alone. Here
the side questions of ShapeScenes' training split are learned alone, from oracle object tokens (the exact attributes
and the 2-D sine-cosine position of each object, `oracle_tokens.object_features`), by one dot-product attention of a
question vector over the objects followed by an MLP on [question, attended object]. Only the question encoder varies:
- `bow`: the mean of whole-word embeddings (no order, no transformer)
- `eot`: the library's text encoder (chapter 06's causal `TextTransformer`, the demo's size: width 96, 2 blocks, 3
  heads) over the data root's WordPiece tokens, read at the end-of-text token as CLIP pools it
- `mean`: the same encoder, its states averaged over the real tokens
- `bidir`: the same encoder without its causal mask, read at the end of text
- `fusion`: the same encoder's tokens into the library's cross-attention fusion (chapter 07's `CrossFusion`, the demo's
  size) over [a learned first token; the objects; learned fillers up to five], read out as the VQA model does
- `fusion_mean`: the same, with the fusion's first position started from the mean of the text states
- `cross`: the mean of the text states as the query of one library `CrossAttention` (3 heads) over the objects, the
  head on [query, attended]: the `mean` model with multi-head attention and its output projection
AdamW at a constant learning rate, batches drawn at random from the training questions; accuracy on the validation
split's side questions (4 answers: left, right, top, bottom).
"""
import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from mmkt_lib.fusion import _masked_mean  # noqa: E402
from oracle_tokens import MAX_OBJECTS, object_features, scale_cross_attention  # noqa: E402

ANSWERS = ('left', 'right', 'top', 'bottom')
QUERIES = ('bow', 'eot', 'mean', 'bidir', 'fusion', 'fusion_mean', 'cross')


def side_questions(root: Path, split: str) -> list:
    "(question, objects, answer) of every side question of a split."
    qs = {q['question_id']: q for q in json.loads((root / f'v2_OpenEnded_shapes_{split}_questions.json').read_text())[
        'questions']}
    scenes = {s['image_id']: s for s in json.loads((root / f'scenes_{split}.json').read_text())['scenes']}
    anns = json.loads((root / f'v2_shapes_{split}_annotations.json').read_text())['annotations']
    return [(qs[a['question_id']]['question'], scenes[a['image_id']]['objects'], a['multiple_choice_answer'])
            for a in anns if a['template'] == 'side']


def tensors(data: list, tok, words: dict) -> dict:
    "Word ids (for `bow`), WordPiece ids and mask, object features and mask, answer index."
    n, W = len(data), max(len(q.split()) for q, _, _ in data)
    wid, wmask = torch.zeros(n, W, dtype=torch.long), torch.zeros(n, W)
    obj, omask = torch.zeros(n, MAX_OBJECTS, 27), torch.zeros(n, MAX_OBJECTS)
    for i, (q, objs, _) in enumerate(data):
        ws = q.lower().rstrip('?').split()
        wid[i, :len(ws)] = torch.tensor([words[w] for w in ws])
        wmask[i, :len(ws)] = 1
        for j, o in enumerate(objs):
            obj[i, j], omask[i, j] = object_features(o, sincos=True), 1
    enc = tok([q for q, _, _ in data], padding=True, return_tensors='pt')
    return {'wid': wid, 'wmask': wmask, 'ids': enc['input_ids'], 'mask': enc['attention_mask'], 'obj': obj,
            'omask': omask, 'y': torch.tensor([ANSWERS.index(a) for _, _, a in data])}


def _bidirectional(text):
    "The text encoder's forward pass with a padding mask instead of its causal mask."
    def forward_features(self, input_ids, attention_mask=None):
        x = self.token_embedding(input_ids) + self.pos_embed[:, :input_ids.shape[1]]
        for blk in self.blocks: x, _ = blk(x, attention_mask[:, None, None, :].bool())
        return self.norm(x)
    text.forward_features = types.MethodType(forward_features, text)


class SideModel(nn.Module):
    def __init__(self, query: str, n_words: int, tok, dim: int = 96):
        super().__init__()
        from mmkt_lib.clip import TextConfig, TextTransformer
        from mmkt_lib.fusion import CrossAttention, CrossFusion, FusionConfig
        self.query, D = query, dim
        self.words = nn.Embedding(n_words, D)
        self.text = TextTransformer(TextConfig(vocab_size=len(tok), dim=D, depth=2, heads=3, context_length=48,
                                               eot_token_id=tok.eos_token_id))
        if query == 'bidir': _bidirectional(self.text)
        self.obj = nn.Sequential(nn.Linear(27, D), nn.GELU(), nn.Linear(D, D))
        self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.head = nn.Sequential(nn.Linear(2 * D, 2 * D), nn.GELU(), nn.Linear(2 * D, len(ANSWERS)))
        self.fusion = CrossFusion(FusionConfig(image_dim=D, text_dim=D, dim=D, depth=2, heads=3))
        self.fusion_head = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.LayerNorm(2 * D),
                                         nn.Linear(2 * D, len(ANSWERS)))
        self.filler = nn.Parameter(torch.randn(1 + MAX_OBJECTS, D) * 0.02)
        self.cross = CrossAttention(D, 3)

    def question(self, b):
        "(B, D) question vector, or (B, L, D) tokens for `fusion`."
        if self.query == 'bow':
            m = b['wmask'][..., None]
            return (self.words(b['wid']) * m).sum(1) / m.sum(1)
        t = self.text.forward_features(b['ids'], b['mask'])                               # (B, L, D)
        if self.query in ('eot', 'bidir'): return self.text.pool(t, b['ids'])
        mean = _masked_mean(t, b['mask'])                                                 # (B, D)
        if self.query in ('mean', 'cross'): return mean
        if self.query == 'fusion_mean': return torch.cat([mean[:, None], t[:, 1:]], 1)
        return t

    def forward(self, b):
        q, o = self.question(b), self.obj(b['obj'])                                       # o: (B, 5, D)
        if self.query.startswith('fusion'):
            o = torch.where(b['omask'][..., None] > 0, o, self.filler[1:][None].expand_as(o))
            img = torch.cat([self.filler[:1][None].expand(len(o), 1, -1), o], 1)           # (B, 1+5, D)
            return self.fusion_head(self.fusion(img, q, b['mask'], pooled_only=True)['pooled'])
        if self.query == 'cross':
            a, _ = self.cross(q[:, None], o, b['omask'])                                    # (B, 1, D)
            return self.head(torch.cat([q, a[:, 0]], -1))
        att = (self.q(q)[:, None] * self.k(o)).sum(-1) / o.shape[-1] ** 0.5                # (B, 5)
        att = att.masked_fill(b['omask'] == 0, float('-inf')).softmax(-1)
        return self.head(torch.cat([q, (att[..., None] * self.v(o)).sum(1)], -1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--query', choices=QUERIES, required=True)
    ap.add_argument('--data', default='data/shapes')
    ap.add_argument('--steps', type=int, default=1000)
    ap.add_argument('--eval-every', type=int, default=250)
    ap.add_argument('--batch', type=int, default=320)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--logit-scale', type=float, default=1.0,
                    help="multiply the queries of every library CrossAttention (its logits) by this factor")
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    from mmkt_lib.text import data_tokenizer
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    root = Path(args.data)
    tr, va = side_questions(root, 'train'), side_questions(root, 'val')
    words = {w: i for i, w in enumerate(sorted({w for q, _, _ in tr + va for w in q.lower().rstrip('?').split()}))}
    tok = data_tokenizer(root, verbose=False)
    T, V = tensors(tr, tok, words), tensors(va, tok, words)
    model = SideModel(args.query, len(words), tok)
    if args.logit_scale != 1.0: scale_cross_attention(model, args.logit_scale)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(T['y']), (args.batch,))
        b = {k: v[idx] for k, v in T.items()}
        loss = F.cross_entropy(model(b), b['y'])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                acc = (model(V).argmax(-1) == V['y']).float().mean().item()
            curve.append({'step': step, 'loss': round(loss.item(), 4), 'val_acc': round(100 * acc, 1),
                          'seconds': round(time.time() - t0)})
            print(args.query, curve[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({'args': vars(args), 'n_train': len(tr), 'n_val': len(va), 'curve': curve}))


if __name__ == '__main__':
    main()
