"""Fusion strategies, BERT masking, hard negatives, and each pre-training objective overfitting a tiny batch."""
import pytest
import torch

from mmkt_lib.clip import CLIP, clip_config
from mmkt_lib.text import train_tokenizer
from mmkt_lib.fusion import FUSIONS, FusionConfig, build_fusion
from mmkt_lib.pretrain import MLMMasker, PretrainConfig, VLPretrainModel, hard_negatives

CAPTIONS = ["a large red circle to the left of a small blue square.", "there are three objects in the image.",
            "a small green triangle above a large yellow circle.", "two squares and one circle.",
            "a purple square near the center of the image.", "a cyan triangle in the top left corner of the image.",
            "four shapes on a plain background.", "a blue circle and a red triangle."]


@pytest.fixture(scope='module')
def tok():
    return train_tokenizer(CAPTIONS)


@pytest.mark.parametrize('name, readout',
                         [(n, 'first') for n in sorted(FUSIONS)] + [('cross', 'eot'), ('cross', 'query')])
@pytest.mark.parametrize('co', [False, True])
def test_fusions_share_the_interface_and_ignore_padding(name, readout, co):
    torch.manual_seed(0)
    cfg = FusionConfig(image_dim=24, text_dim=20, dim=16, depth=2, heads=2, co_attention=co, readout=readout)
    f = build_fusion(name, cfg).eval()
    img, txt = torch.randn(3, 10, 24), torch.randn(7, 5, 20)
    mask = torch.ones(7, 5, dtype=torch.bool); mask[1, 2:] = False; mask[6, 4:] = False
    idx = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    with torch.no_grad():
        out = f(img, txt, mask, idx, return_attn=True)
        junk = txt.clone(); junk[1, 2:] = 1e3; junk[6, 4:] = -1e3
        out2 = f(img, junk, mask, idx)
    assert out['tokens'].shape == (7, 5, 16) and out['pooled'].shape == (7, 16)
    assert torch.allclose(out['pooled'], out2['pooled'], atol=1e-5)
    assert torch.allclose(out['tokens'][mask], out2['tokens'][mask], atol=1e-5)
    # image_index really selects the image: the same text with another image gives another pooled vector
    with torch.no_grad(): other = f(img, txt, mask, torch.tensor([1, 0, 1, 1, 1, 2, 2]))
    assert not torch.allclose(other['pooled'][0], out['pooled'][0])
    assert torch.allclose(other['pooled'][2:], out['pooled'][2:], atol=1e-6)
    with torch.no_grad(): quick = f(img, txt, mask, idx, pooled_only=True)   # what a classifier computes
    assert torch.allclose(quick['pooled'], out['pooled'], atol=1e-5)


def test_masking_statistics(tok):
    enc = tok(CAPTIONS, padding=True, return_tensors='pt')
    masker = MLMMasker(tok)
    ids, am = enc['input_ids'].repeat(500, 1), enc['attention_mask'].repeat(500, 1)
    m, labels = masker(ids, am, torch.Generator().manual_seed(0))
    sel, ok = labels != -100, masker.maskable(ids, am)
    assert not (sel & ~ok).any()                                   # specials and padding never selected
    assert torch.equal(m[~sel], ids[~sel]) and torch.equal(labels[sel], ids[sel])
    assert abs(sel.sum() / ok.sum() - 0.15) < 0.005
    frac_mask = (m[sel] == tok.mask_token_id).float().mean()
    frac_same = (m[sel] == ids[sel]).float().mean()
    assert abs(frac_mask - 0.8) < 0.01 and abs(frac_same - 0.1) < 0.012  # (random may hit the same token: +1/V)
    assert not torch.isin(m[sel & (m != tok.mask_token_id) & (m != ids)], torch.tensor(tok.all_special_ids)).any()


def test_hard_negative_is_never_the_positive():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        sim = torch.randn(6, 6) * 10
        sim.diagonal().add_(100)                                    # positives are by far the most similar
        same = torch.rand(6, 6, generator=g) < 0.3
        neg = hard_negatives(sim, same, g)
        assert (neg != torch.arange(6)).all()
        rows = torch.arange(6)
        valid = ~same[rows, neg] | same.masked_fill(torch.eye(6, dtype=torch.bool), True).all(1)
        assert valid.all()                                          # an 'identical caption' only when nothing else is left


def _tiny(tok, fusion, weights, co=False, readout='first'):
    torch.manual_seed(0)
    clip = CLIP(clip_config('tiny', image_size=16, patch_size=8, dim=32, depth=1, heads=2, text_dim=32, text_depth=1,
                            text_heads=2, vocab_size=len(tok), context_length=24, embed_dim=16, eot_token_id=tok.eos_token_id))
    fc = FusionConfig(dim=32, depth=1, heads=2, co_attention=co, readout=readout)
    return VLPretrainModel(clip, tok, PretrainConfig(fusion, fc, weights))


@pytest.mark.parametrize('objective, fusion, co, start_ratio, steps, lr', [
    ('itc', 'cross', False, 0.3, 150, 3e-3), ('itm', 'cross', False, 0.5, 300, 1e-3), ('mlm', 'cross', False, 0.3, 150, 3e-3),
    ('mlm', 'late', False, 0.3, 150, 3e-3), ('mlm', 'early', False, 0.3, 150, 3e-3), ('mpm', 'cross', True, 0.6, 150, 3e-3),
    ('mpm', 'early', False, 0.6, 150, 3e-3), ('itm', 'cross-query', False, 0.5, 300, 1e-3),
    ('mlm', 'cross-query', False, 0.3, 150, 3e-3)])
def test_each_objective_overfits_a_tiny_batch(tok, objective, fusion, co, start_ratio, steps, lr):
    weights = {'itc': 0.0, 'itm': 0.0, 'mlm': 0.0, 'mpm': 0.0, objective: 1.0}
    fusion, _, readout = fusion.partition('-')                      # 'cross-query': matching reads the pooled question
    model = _tiny(tok, fusion, weights, co, readout or 'first')
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    enc = tok(CAPTIONS, padding=True, return_tensors='pt')
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        out = model(images, enc['input_ids'], enc['attention_mask'], torch.Generator().manual_seed(step % 4))
        opt.zero_grad(); out[objective].backward(); opt.step()
        losses.append(out[objective].item())
    assert sum(losses[-5:]) / 5 < start_ratio * sum(losses[:5]) / 5, (objective, losses[:5], losses[-5:])
