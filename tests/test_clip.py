"""CLIP: Hugging Face parity, the contrastive loss, its two-process form, the logit-scale cap, zero-shot and recall."""
import json
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from mmkt_lib.clip import (CLIP, ContrastiveLoss, TextTransformer, clip_config, contrastive_loss, load_pretrained,
                           retrieval_recall, zero_shot_classifier, zero_shot_logits)

TOL = 1e-5


def hf_clip(eos_token_id=98):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=16, eos_token_id=eos_token_id, bos_token_id=97, pad_token_id=0),
                     vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                        image_size=32, patch_size=8), projection_dim=24)
    return CLIPModel(cfg).eval()


@pytest.mark.parametrize('eos', [98, 2])
def test_hf_parity_from_saved_directory(tmp_path, eos):
    hf = hf_clip(eos)
    hf.save_pretrained(tmp_path)
    ours = CLIP.from_pretrained(tmp_path).eval()
    assert ours.text.cfg.eot_token_id == (None if eos == 2 else 98)
    # right-padded texts; with eos=2 (legacy) pooling is at argmax(ids), so the end token must be the largest id there
    end = 98
    ids = torch.tensor([[97, 5, 6, 7, end, 0, 0, 0], [97, 9, end, 0, 0, 0, 0, 0], [97, 3, 4, 5, 6, 7, 8, end]])
    mask = (ids != 0).long()
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px)
        li, lt = ours.logits(px, ids, mask)
        assert (ref.logits_per_image - li).abs().max() <= TOL and (ref.logits_per_text - lt).abs().max() <= TOL
        ti = hf.get_text_features(input_ids=ids, attention_mask=mask)
        assert (getattr(ti, 'pooler_output', ti) - ours.encode_text(ids, mask)).abs().max() <= TOL
        ii = hf.get_image_features(pixel_values=px)
        assert (getattr(ii, 'pooler_output', ii) - ours.encode_image(px)).abs().max() <= TOL


def test_load_pretrained_returns_the_directory_tokenizer(tmp_path):
    import transformers
    from transformers import CLIPTokenizerFast
    hf = hf_clip(); hf.save_pretrained(tmp_path)
    model, tok = load_pretrained(tmp_path)
    assert tok is None and isinstance(model, CLIP)
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1, 'a</w>': 2, 'red</w>': 3, 'circle</w>': 4}
    if int(transformers.__version__.split('.')[0]) >= 5: ref = CLIPTokenizerFast(vocab=vocab, merges=[])
    else:
        (tmp_path / 'v.json').write_text(json.dumps(vocab)); (tmp_path / 'm.txt').write_text('#version: 0.2\n')
        ref = CLIPTokenizerFast(vocab_file=str(tmp_path / 'v.json'), merges_file=str(tmp_path / 'm.txt'))
    ref.save_pretrained(tmp_path)
    _, tok = load_pretrained(tmp_path)
    assert tok('a red circle')['input_ids'] == ref('a red circle')['input_ids']
    with pytest.raises(FileNotFoundError, match='no config.json'): CLIP.from_pretrained(tmp_path / 'nowhere')


def test_loss_equals_direct_cross_entropy_and_is_symmetric():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(7, 12), dim=-1), F.normalize(torch.randn(7, 12), dim=-1)
    scale = torch.tensor(12.5)
    logits = scale * img @ txt.T
    direct = 0.5 * (-(logits.log_softmax(1).diag()).mean() - (logits.T.log_softmax(1).diag()).mean())
    assert torch.allclose(contrastive_loss(img, txt, scale), direct, atol=1e-6)
    assert torch.allclose(contrastive_loss(img, txt, scale), contrastive_loss(txt, img, scale), atol=1e-6)
    assert torch.allclose(ContrastiveLoss()(img, txt, scale), direct, atol=1e-6)
    perm = torch.randperm(7)  # shuffling the pairs together changes nothing
    assert torch.allclose(contrastive_loss(img[perm], txt[perm], scale), direct, atol=1e-6)
    assert contrastive_loss(img, txt[perm], scale) > direct  # breaking the pairs raises the loss here
    with pytest.raises(ValueError, match='7 images but 5 texts'): contrastive_loss(img, txt[:5], scale)


def test_logit_scale_is_capped():
    cfg = clip_config('tiny', image_size=32, patch_size=16, depth=1, text_dim=32, text_depth=1, text_heads=2, vocab_size=20,
                      context_length=8, embed_dim=16, eot_token_id=3)
    model = CLIP(cfg)
    assert math.isclose(model.scale().item(), 1 / 0.07, rel_tol=1e-5)
    opt = torch.optim.SGD([model.logit_scale], lr=10.0)
    for _ in range(3):  # push the temperature down hard: the loss wants sharper logits on separable pairs
        out = model(torch.randn(4, 3, 32, 32), torch.tensor([[1, 5, 3], [1, 6, 3], [1, 7, 3], [1, 8, 3]]))
        (-out['logit_scale']).backward(); opt.step(); opt.zero_grad(); model.clamp_logit_scale_()
        assert model.scale().item() <= 100.0 + 1e-4 and model.logit_scale.item() <= math.log(100) + 1e-6
    assert model.scale().item() == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad(): model.logit_scale.fill_(10.0)
    assert model.scale().item() == 100.0


def test_text_transformer_is_causal_and_pools_at_end_of_text():
    torch.manual_seed(0)
    t = TextTransformer(vocab_size=30, context_length=10, dim=32, depth=2, heads=4, eot_token_id=2).eval()
    ids = torch.tensor([[1, 7, 8, 2, 0, 0], [1, 9, 2, 0, 0, 0]])
    with torch.no_grad():
        feats = t.forward_features(ids)
        changed = ids.clone(); changed[:, 4:] = 11
        assert torch.allclose(t(changed), t(ids), atol=1e-6)
        assert torch.allclose(t(ids), feats[[0, 1], [3, 2]])
        assert not torch.allclose(t.forward_features(changed)[:, 4:], feats[:, 4:])
    with pytest.raises(ValueError, match='exceeds the context length 10'): t(torch.zeros(1, 11, dtype=torch.long))


def test_retrieval_recall_hand_made():
    sim = torch.tensor([[.9, .1, .8, .0, .0, .0],
                        [.0, .0, .7, .6, .0, .0],
                        [.0, .95, .0, .0, .1, .2]])
    r = retrieval_recall(sim, [0, 0, 1, 1, 2, 2], ks=(1, 2, 3))
    assert r['i2t_R@1'] == pytest.approx(200 / 3) and r['i2t_R@2'] == 100
    assert r['t2i_R@1'] == pytest.approx(400 / 6) and r['t2i_R@2'] == 100  # text 1's image (2) ranks first, image 0 second
    assert retrieval_recall(torch.eye(4), [0, 1, 2, 3], ks=(1,)) == {'i2t_R@1': 100.0, 't2i_R@1': 100.0}
    with pytest.raises(ValueError, match='expected \\(6,\\)'): retrieval_recall(sim, [0, 1, 2])
    with pytest.raises(ValueError, match='out of range'): retrieval_recall(sim, [0, 0, 1, 1, 2, 5])


class _FakeTok:
    "Maps a prompt to [bos, class token, eot] with one token per distinct word set; enough for the classifier test."
    def __init__(self): self.ids = {}
    def __call__(self, texts, padding=True, return_tensors='pt'):
        rows = [[1, 4 + self.ids.setdefault(t, len(self.ids)), 3] for t in texts]
        return _Enc(input_ids=torch.tensor(rows), attention_mask=torch.ones(len(rows), 3, dtype=torch.long))


class _Enc(dict):
    def to(self, device): return self


def test_zero_shot_prompt_ensembling():
    torch.manual_seed(0)
    cfg = clip_config('tiny', image_size=32, patch_size=16, depth=1, text_dim=32, text_depth=1, text_heads=2, vocab_size=40,
                      context_length=8, embed_dim=16, eot_token_id=3)
    model, tok = CLIP(cfg).eval(), _FakeTok()
    templates = ['a {}.', 'a photo of a {}.']
    clf = zero_shot_classifier(model, tok, ['cat', 'dog'], templates)
    assert clf.shape == (16, 2) and torch.allclose(clf.norm(dim=0), torch.ones(2), atol=1e-6)
    with torch.no_grad():
        for c, name in enumerate(['cat', 'dog']):
            e = tok([t.format(name) for t in templates])
            manual = F.normalize(F.normalize(model.encode_text(e['input_ids']), dim=-1).mean(0), dim=-1)
            assert torch.allclose(clf[:, c], manual, atol=1e-6)
    img = torch.stack([clf[:, 1] * 3, clf[:, 0]])  # embeddings pointing at 'dog', then 'cat'
    assert zero_shot_logits(img, clf).argmax(-1).tolist() == [1, 0]


# ---------------------------------------------------------------- two processes = one process with the global batch

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _small_clip():
    torch.manual_seed(0)
    cfg = clip_config('tiny', image_size=32, patch_size=16, depth=2, dim=32, heads=2, text_dim=32, text_depth=2, text_heads=2,
                      vocab_size=40, context_length=8, embed_dim=16, eot_token_id=3)
    return CLIP(cfg)


def _global_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=g)
    ids = torch.randint(4, 40, (8, 6), generator=g); ids[:, 0] = 1; ids[:, -1] = 3
    return images, ids


def _worker(rank, world, port, out_path, with_grad):
    import torch.distributed as dist
    from mmkt_lib import clip as clip_mod
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        if not with_grad:  # negative control: a gather that drops the other processes' gradient contributions
            def plain_gather(x, group=None):
                out = [torch.empty_like(x) for _ in range(world)]
                dist.all_gather(out, x.detach().contiguous())
                out[rank] = x
                return torch.cat(out)
            clip_mod.gather_with_grad = plain_gather
        model, (images, ids) = _small_clip(), _global_batch()
        b = images.shape[0] // world
        out = model(images[rank * b:(rank + 1) * b], ids[rank * b:(rank + 1) * b])
        loss = clip_mod.ContrastiveLoss()(out['image_embeds'], out['text_embeds'], out['logit_scale'])
        loss.backward()
        for p in model.parameters():  # what DDP does: average the gradients over processes
            dist.all_reduce(p.grad); p.grad /= world
        total = loss.detach().clone(); dist.all_reduce(total); total /= world
        if rank == 0:
            torch.save({'loss': total, 'grads': {n: p.grad for n, p in model.named_parameters()}}, out_path)
    finally:
        dist.destroy_process_group()


def _run_two(tmp_path, with_grad):
    import torch.multiprocessing as mp
    out_path = str(tmp_path / f'dist_{with_grad}.pt')
    mp.spawn(_worker, args=(2, _free_port(), out_path, with_grad), nprocs=2, join=True)
    return torch.load(out_path, weights_only=True)


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    model, (images, ids) = _small_clip(), _global_batch()
    out = model(images, ids)
    loss = contrastive_loss(out['image_embeds'], out['text_embeds'], out['logit_scale'])
    loss.backward()
    ref = {n: p.grad for n, p in model.named_parameters()}
    scale = max(g.abs().max().item() for g in ref.values())
    def worst(grads): return max((grads[n] - g).abs().max().item() for n, g in ref.items()) / scale
    got = _run_two(tmp_path, with_grad=True)
    assert torch.allclose(got['loss'], loss.detach(), atol=1e-6), (got['loss'], loss)
    assert worst(got['grads']) < 1e-5, worst(got['grads'])            # equal up to float32 summation order
    control = _run_two(tmp_path, with_grad=False)                      # same loss, but gradients lost in the gather
    assert torch.allclose(control['loss'], loss.detach(), atol=1e-6)
    assert worst(control['grads']) > 1e-2, worst(control['grads'])


def test_throughput_benchmark_runs():
    "Smoke test only (tiny model, CPU, one step): the benchmark's numbers come from a GPU run, never from here."
    import subprocess, sys
    from pathlib import Path
    script = Path(__file__).parent.parent / 'benchmarks' / 'clip_throughput.py'
    r = subprocess.run([sys.executable, str(script), '--device', 'cpu', '--tiny', '--batch', '2', '--steps', '1',
                        '--warmup', '1', '--modes', 'eager'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert '| hf | eager |' in r.stdout and '| mmkt | eager |' in r.stdout
