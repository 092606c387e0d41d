"""VQA and captioning heads: soft targets, the VQA loss, decoding (beam 1 = greedy, end token, maximum length),
and each head overfitting a tiny batch."""
import math

import pytest
import torch
from torch import nn

from mmkt_lib.caption import Captioner, DecoderConfig, beam_search, greedy_decode
from mmkt_lib.clip import CLIP, clip_config
from mmkt_lib.vqa import AnswerVocab
from mmkt_lib.data import VQACollate
from mmkt_lib.text import train_tokenizer
from mmkt_lib.fusion import FusionConfig
from mmkt_lib.vit import ViT, vit_config
from mmkt_lib.vqa import VQAModel, vqa_loss, vqa_soft_score


def test_soft_targets_on_hand_made_answer_lists():
    v = AnswerVocab(['yes', 'no', '2', 'red', 'blue'])
    assert v.soft_scores(['yes'] * 10) == {0: 1.0}
    assert v.soft_scores(['red'] * 2 + ['blue'] * 8) == {3: 2 / 3, 4: 1.0}
    assert v.soft_scores(['red'] + ['green'] * 9) == {3: 1 / 3}          # 'green' is out of vocabulary
    assert v.soft_scores(['Two', 'two.', '2', 'a red']) == {2: 1.0, 3: 1 / 3}   # normalised before counting
    assert v.soft_scores([]) == {}


class _Tok:  # just enough of a tokenizer for VQACollate (which pads the ids itself, with `pad_token_id`)
    pad_token_id = 0

    def __call__(self, texts, truncation=True, max_length=32):
        return {'input_ids': [[1, 5 + len(t) % 7, 2] for t in texts]}


def test_vqa_collate_targets_and_loss():
    v = AnswerVocab(['yes', 'no', '2'])
    items = [{'image': torch.zeros(3, 8, 8), 'image_id': 5, 'questions': ['a?', 'bb?'], 'question_ids': [50, 51],
              'answers': [['yes'] * 10, ['2'] * 2 + ['two'] * 8]},
             {'image': torch.zeros(3, 8, 8), 'image_id': 6, 'questions': ['ccc?'], 'question_ids': [60], 'answers': [['no'] * 3 + ['x'] * 7]}]
    b = VQACollate(_Tok(), v)(items)
    assert b['image_index'].tolist() == [0, 0, 1]
    assert b['targets'].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    perfect = torch.where(b['targets'] > 0, 30.0, -30.0)
    assert vqa_loss(perfect, b['targets']) < 1e-6 and vqa_soft_score(perfect, b['targets']) == 1
    # BCE with soft targets: an exact computation
    logits = torch.zeros(1, 2); t = torch.tensor([[2 / 3, 0.0]])
    assert vqa_loss(logits, t).item() == pytest.approx(2 * math.log(2))


class _Bigram(nn.Module):
    "A captioner stand-in: next-token log-probabilities from a random table indexed by the last token."
    def __init__(self, V=9, eos=1, seed=0):
        super().__init__()
        self.table = torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * 3
        self.table[:, 2] = -50                       # never emit PAD
        self.table[eos, 2] = 50                      # after EOS only PAD (unused: decoders pad finished rows)
    def encode(self, images): return images
    def logits(self, memory, ids): return self.table[ids] + memory[:, :1, None] * 0


def test_beam_one_equals_greedy():
    for seed in range(20):
        m = _Bigram(seed=seed)
        x = torch.zeros(4, 1)
        assert torch.equal(greedy_decode(m, x, 0, 1, 2, max_length=12), beam_search(m, x, 0, 1, 2, beam_size=1, max_length=12))
    torch.manual_seed(0)
    cap = Captioner(ViT(vit_config('tiny', image_size=16, patch_size=8, dim=32, depth=1, heads=2)),
                    DecoderConfig(vocab_size=20, image_dim=32, dim=32, depth=1, heads=2, max_len=16)).eval()
    imgs = torch.randn(3, 3, 16, 16)
    assert torch.equal(greedy_decode(cap, imgs, 3, 4, 0, max_length=10), beam_search(cap, imgs, 3, 4, 0, beam_size=1, max_length=10))


def test_decoding_stops_at_end_token_and_respects_max_length():
    V, BOS, EOS, PAD = 6, 0, 1, 2
    t = torch.full((V, V), -30.0)
    t[BOS, 3] = 0; t[3, 4] = 0; t[4, EOS] = 0; t[EOS, 5] = 0   # BOS 3 4 EOS, then the model would go on
    m = _Bigram(V); m.table = t
    x = torch.zeros(2, 1)
    for out in (greedy_decode(m, x, BOS, EOS, PAD, max_length=10), beam_search(m, x, BOS, EOS, PAD, beam_size=3, max_length=10)):
        assert out[0, :4].tolist() == [BOS, 3, 4, EOS] and (out[:, 4:] == PAD).all()
    loop = torch.full((V, V), -30.0); loop[:, 3] = 0               # never ends
    m.table = loop
    for k in (1, 2, 4):
        out = beam_search(m, x, BOS, EOS, PAD, beam_size=k, max_length=5)
        assert out.shape == (2, 6) and EOS not in out
    assert greedy_decode(m, x, BOS, EOS, PAD, max_length=5).shape == (2, 6)
    with pytest.raises(ValueError, match='beam_size must be >= 1'): beam_search(m, x, BOS, EOS, PAD, beam_size=0)


def test_length_penalty_changes_the_choice():
    V, BOS, EOS, PAD = 6, 0, 1, 2
    t = torch.full((V, V), -30.0)
    t[BOS, EOS], t[BOS, 3] = math.log(0.4), math.log(0.6)          # short: 0.4 total over 1 token
    t[3, 4] = 0.0; t[4, EOS], t[4, 5] = math.log(0.6), math.log(0.4)  # long: 0.36 total over 3 tokens
    m = _Bigram(V); m.table = t
    x = torch.zeros(1, 1)
    assert beam_search(m, x, BOS, EOS, PAD, beam_size=2, length_penalty=0.0)[0, :2].tolist() == [BOS, EOS]
    assert beam_search(m, x, BOS, EOS, PAD, beam_size=2, length_penalty=1.0)[0].tolist() == [BOS, 3, 4, EOS]


CAPS = ["a red circle.", "a blue square.", "two green triangles.", "a large yellow circle above a small square.",
        "there are three objects.", "a purple square on the left."]


@pytest.mark.parametrize('kind', ['cross', 'prefix'])
def test_captioner_overfits_a_tiny_batch(kind):
    tok = train_tokenizer(CAPS)
    torch.manual_seed(0)
    cap = Captioner(ViT(vit_config('tiny', image_size=16, patch_size=8, dim=32, depth=1, heads=2)),
                    DecoderConfig(vocab_size=len(tok), image_dim=32, dim=32, depth=2, heads=2, max_len=24, kind=kind))
    imgs = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    enc = tok(CAPS, padding=True, return_tensors='pt')
    opt = torch.optim.AdamW(cap.parameters(), lr=3e-3)
    for _ in range(200):
        loss = cap.loss(imgs, enc['input_ids'], enc['attention_mask'], label_smoothing=0.0)
        opt.zero_grad(); loss.backward(); opt.step()
    assert loss.item() < 0.1, loss.item()
    cap.eval()
    out = greedy_decode(cap, imgs, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, max_length=20)
    assert tok.batch_decode(out, skip_special_tokens=True) == tok.batch_decode(enc['input_ids'], skip_special_tokens=True)


@pytest.mark.parametrize('fusion, readout', [('late', 'first'), ('early', 'first'), ('cross', 'first'),
                                             ('cross', 'query')])
def test_vqa_model_overfits_a_tiny_batch(fusion, readout):
    tok = train_tokenizer(["what color is the circle?", "how many squares are there?", "is there a triangle?"])
    v = AnswerVocab(['red', 'blue', '1', '2', 'yes', 'no'])
    torch.manual_seed(0)
    clip = CLIP(clip_config('tiny', image_size=16, patch_size=8, dim=32, depth=1, heads=2, text_dim=32, text_depth=1,
                            text_heads=2, vocab_size=len(tok), context_length=16, embed_dim=16, eot_token_id=tok.eos_token_id))
    model = VQAModel(clip, len(v), fusion, FusionConfig(dim=32, depth=1, heads=2, readout=readout))
    imgs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    qs = ["what color is the circle?", "how many squares are there?", "is there a triangle?"] * 2
    enc = tok(qs, padding=True, return_tensors='pt')
    image_index = torch.tensor([0, 0, 0, 1, 2, 2])                      # answers depend on the image
    answers = [['red'] * 10, ['2'] * 10, ['yes'] * 10, ['blue'] * 10, ['1'] * 10, ['no'] * 10]
    targets = torch.zeros(6, len(v))
    for k, a in enumerate(answers):
        for j, s in v.soft_scores(a).items(): targets[k, j] = s
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(imgs, enc['input_ids'], enc['attention_mask'], image_index)
        loss = vqa_loss(logits, targets); opt.zero_grad(); loss.backward(); opt.step()
    assert vqa_soft_score(logits, targets).item() == 1.0 and loss.item() < 0.3
    if readout == 'query':   # the classifier reads the pooled question alone: the per-token stream gets no gradient
        assert all(p.grad is None for p in model.fusion.layers.parameters())
        assert all(p.grad is not None for p in model.fusion.query.parameters())
