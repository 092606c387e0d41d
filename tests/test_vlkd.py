"VLKD in miniature (chapters 18b, 18c): the losses on hand-made inputs, what alignment freezes, the text corpus."
import math
import random

import pytest
import torch

from mmkt_lib.text import train_tokenizer
from mmkt_lib.textlm import (TextLM, TextLMConfig, answer_text, as_answer, describe_scene, generate, qa_source,
                             seq2seq_loss, span_mask, text_pairs)
from mmkt_lib.vlkd import (AlignData, VLKDMaps, align, close_gap, itcl_loss, modality_gap, pooled, slot_qa_loss,
                           ttdm_loss, vlkd_losses)

SCENE = {'objects': [{'shape': 'circle', 'color': 'red', 'size': 'small', 'pixel_coords': [50.0, 10.0]},
                     {'shape': 'square', 'color': 'blue', 'size': 'large', 'pixel_coords': [10.0, 30.0]}]}


def test_ttdm_is_the_squared_distance_of_normalised_features():
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # row 0: same direction -> 0; row 1: (0, 1) against (0.7071, 0.7071) -> 2 - 2 cos 45 degrees
    assert ttdm_loss(a, b).item() == pytest.approx((0 + 2 - 2 * math.cos(math.pi / 4)) / 2, abs=1e-6)


def test_itcl_is_symmetric_infonce_with_the_given_scale():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # logits (scale 2): h0.v = [2, 2], h1.v = [0, 0]; each row and column has a known softmax
    row = 0.5 * (math.log(2) + math.log(2))                          # both rows: uniform over two
    col0 = -math.log(math.exp(2) / (math.exp(2) + 1))                # column 0: target h0 (2) against h1 (0)
    col1 = -math.log(1 / (math.exp(2) + 1))                          # column 1: target h1 (0) against h0 (2)
    assert itcl_loss(h, v, 2.0).item() == pytest.approx(0.5 * (row + 0.5 * (col0 + col1)), abs=1e-5)
    assert itcl_loss(torch.eye(3), torch.eye(3), 100.0).item() < 1e-6


def test_closing_the_gap_moves_images_onto_the_texts_mean():
    img = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    txt = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.6, 0.8]])
    gap = modality_gap(img, txt)
    assert torch.allclose(gap, torch.tensor([-1.0, 0.8, 0.4]))
    assert torch.allclose(close_gap(img, gap), torch.nn.functional.normalize(txt.mean(0), dim=0).expand(2, 3))


def test_pooled_ignores_padding():
    s = torch.tensor([[[1.0], [3.0], [1e6]]])
    assert pooled(s, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_span_mask_masks_about_the_asked_share_and_keeps_order():
    words = [f'w{i}' for i in range(5000)]
    out = span_mask(words, random.Random(0)).split()
    kept = [w for w in out if w != '[MASK]']
    assert kept == sorted(kept, key=lambda w: int(w[1:]))
    assert 0.25 < 1 - len(kept) / len(words) < 0.35
    assert span_mask(words[:9], random.Random(0), ratio=0.0) == ' '.join(words[:9])


def test_numbers_are_written_as_words_and_scored_as_digits():
    got = [answer_text('3'), answer_text('yes'), as_answer('three'), as_answer('left')]
    assert got == ['three', 'yes', '3', 'left']


def test_text_corpus_pairs_denoising_and_reading_comprehension():
    d = describe_scene(SCENE)
    assert d == 'a large blue square on the left side, a small red circle in the top right corner'
    items = [{'image_id': 1, 'description': d, 'questions': [(10, 'what color is the circle?', 'red')]}]
    pairs = text_pairs(items, seed=0)
    assert (qa_source('what color is the circle?', d), 'red') in pairs
    assert any(t == d and '[MASK]' in s for s, t in pairs)


@pytest.fixture(scope='module')
def tok():
    texts = [describe_scene(SCENE), 'what color is the circle? red blue yes no', 'a small red circle.']
    return train_tokenizer(texts, vocab_size=200)


def _align_data(n: int = 12, e: int = 8) -> AlignData:
    g = torch.Generator().manual_seed(0)
    emb = lambda k: torch.nn.functional.normalize(torch.randn(k, e, generator=g), dim=-1)
    caps = ['a small red circle.', 'a large blue square.'] * (n // 2)
    img, desc = emb(n), emb(1)
    qa = [(0, 'what color is the circle?', 'red')] * 4
    return AlignData(caps, emb(n), img, qa, desc, 0.1, modality_gap(img, desc))


def test_alignment_leaves_the_frozen_parts_bit_identical(tok):
    torch.manual_seed(0)
    lm = TextLM(TextLMConfig(vocab_size=len(tok), dim=16, depth=1, heads=2, max_len=48))
    maps = VLKDMaps(16, 8, prefix_tokens=2)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    log = align(lm, maps, tok, _align_data(), [('a [MASK] circle.', 'a small red circle.')], steps=3, scale=10.0,
                batch_size=4)
    assert {'ttdm', 'itcl', 'icti', 'text', 'slot_qa'} <= set(log[-1])
    after = lm.state_dict()
    frozen = [k for k in before if k.startswith(('tok.', 'decoder.', 'dec_norm.', 'pos_dec'))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k not in frozen)


def test_decoder_sees_the_prefix_and_generation_stops(tok):
    torch.manual_seed(0)
    lm = TextLM(TextLMConfig(vocab_size=len(tok), dim=16, depth=1, heads=2, max_len=48)).eval()
    pre = torch.randn(2, 3, 16)
    a = seq2seq_loss(lm, tok, ['[MASK]'] * 2, ['a small red circle.'] * 2, prefix=pre)
    b = seq2seq_loss(lm, tok, ['[MASK]'] * 2, ['a small red circle.'] * 2, prefix=pre.flip(-1))
    assert a.item() != b.item()
    out = generate(lm, tok, ['[MASK]', 'a [MASK]'], prefix=pre, max_new=5)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_icti_and_slot_losses_are_ln_v_for_a_model_that_knows_nothing(tok):
    "With every weight zero the logits are all equal, so each target token costs ln(V): ICTI and the slot loss alike."
    lm = TextLM(TextLMConfig(vocab_size=len(tok), dim=16, depth=1, heads=2, max_len=48))
    maps = VLKDMaps(16, 8, prefix_tokens=2)
    for p in [*lm.parameters(), *maps.parameters()]: torch.nn.init.zeros_(p)
    d = _align_data()
    parts = vlkd_losses(lm, maps, tok, d, [0, 1, 2], scale=10.0, rng=random.Random(0))
    assert parts['icti'].item() == pytest.approx(math.log(len(tok)), abs=1e-5)
    assert slot_qa_loss(lm, maps, tok, d, [0, 1]).item() == pytest.approx(math.log(len(tok)), abs=1e-5)
    assert parts['ttdm'].item() == pytest.approx(1.0, abs=1e-6)      # a zero feature is at distance 1 from unit vectors
