"""Distillation (chapter 18): each loss on hand-made inputs, a teacher as its own student gives zero distillation
loss, inheritance cuts whole heads, the teacher stays bit-identical while a student learns from it, the student's size."""
import copy
import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmkt_lib.cli import main
from mmkt_lib.clip import CLIP, clip_config
from mmkt_lib.config import load_config
from mmkt_lib.core import count_parameters
from mmkt_lib.distill import (AffinityDistillLoss, _axis_index, _distil_contrastive, _distil_vqa, answer_distill_loss,
                              feature_distill_loss, inherit_weights, student_config)
from mmkt_lib.pipeline import pretrain_model, run_pipeline
from mmkt_lib.text import data_tokenizer
from mmkt_lib.vqa import VQAModel


def test_affinity_loss_hand_value():
    "Teacher uniform over 2 captions (scale 0), student at scale 3 on orthogonal embeddings: KL per row, both ways."
    e = torch.eye(2)
    s = torch.sigmoid(torch.tensor(3.0)).item()
    want = math.log(0.5) - 0.5 * (math.log(s) + math.log(1 - s))
    assert AffinityDistillLoss()(e, e, 3.0, e, e, 0.0).item() == pytest.approx(want, abs=1e-6)
    assert AffinityDistillLoss()(e, e, 3.0, e, e, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_and_answer_losses_hand_values():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    assert feature_distill_loss(a, b).item() == pytest.approx(2 - 2 * 24 / 25)      # 2 - 2 cos
    z = torch.tensor([[1.0, 0.0]])
    p = F.softmax(z[0] / 4, -1)
    want = 16 * float((p * (p / 0.5).log()).sum())                                    # T^2 KL(p || uniform), T = 4
    assert answer_distill_loss(torch.zeros(1, 2), z, temperature=4).item() == pytest.approx(want, abs=1e-6)


def _tiny_clip(dim=24):
    return CLIP(clip_config('tiny', image_size=32, patch_size=8, dim=dim, depth=2, heads=3, text_dim=dim, text_depth=1,
                            text_heads=3, vocab_size=50, context_length=12, embed_dim=24, eot_token_id=2))


def test_a_teacher_as_its_own_student_gives_zero_distillation_loss():
    torch.manual_seed(0)
    teacher = _tiny_clip().eval()
    student = copy.deepcopy(teacher)
    b = {'images': torch.randn(4, 3, 32, 32), 'input_ids': torch.randint(3, 50, (4, 12)),
         'attention_mask': torch.ones(4, 12, dtype=torch.long)}
    out = _distil_contrastive(teacher, aff=1.0, feat=1.0)(student, b)
    assert out['aff'].item() == pytest.approx(0.0, abs=1e-6) and out['feat'].item() == pytest.approx(0.0, abs=1e-6)
    vqa = VQAModel(teacher, 7).eval()
    qb = {**b, 'image_index': torch.arange(4), 'targets': torch.zeros(4, 7)}
    assert _distil_vqa(vqa, 1.0, 2.0)(copy.deepcopy(vqa), qb)['ans'].item() == pytest.approx(0.0, abs=1e-6)


def test_inheritance_keeps_whole_heads_and_copies_equal_shapes():
    assert _axis_index(12, 6, 12, 6, 3).tolist() == [0, 1, 4, 5, 8, 9]
    assert _axis_index(36, 18, 12, 6, 3).tolist() == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29, 32, 33]
    assert _axis_index(48, 24, 12, 6, 3).tolist() == list(range(24))                   # MLP hidden: the first units
    assert _axis_index(10, 7, 12, 6, 3) is None
    torch.manual_seed(0)
    teacher, student = _tiny_clip(24), _tiny_clip(12)
    assert inherit_weights(student, teacher, 24, 12, 3) == []
    keep = _axis_index(24, 12, 24, 12, 3)
    assert torch.equal(student.visual.patch_embed.proj.weight, teacher.visual.patch_embed.proj.weight[keep])
    assert torch.equal(student.text_projection.weight, teacher.text_projection.weight[:, keep])
    twin = _tiny_clip(24)
    assert inherit_weights(twin, teacher, 24, 24, 3) == []
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), teacher.state_dict().values()))


def test_student_is_a_quarter_of_the_demo_teacher(shapes):
    tcfg = load_config('shapes_demo')
    scfg = student_config(tcfg)
    assert (scfg.vision_dim, scfg.text_dim, scfg.fusion_dim, scfg.decoder_dim) == (48, 48, 48, 48)
    tok = data_tokenizer(shapes, verbose=False)
    t, s = pretrain_model(tcfg, tok, 10).clip, pretrain_model(scfg, tok, 10).clip
    ratio = count_parameters(s) / count_parameters(t)
    assert 0.24 < ratio < 0.32, ratio
    with pytest.raises(ValueError, match='does not split into 3 heads of even width'):
        student_config(tcfg, shrink=5)   # 19 channels


def _digest(run):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob('*.safetensors'))}


def test_mmkt_distill_leaves_the_teacher_bit_identical(shapes, tmp_path, capsys):
    steps = 'steps={contrastive: 4, pretrain: 0, vqa: 4, caption: 2}'
    teacher = tmp_path / 'teacher'
    run_pipeline(load_config('shapes_tiny', [f'data={shapes}', 'source=files', f'out={teacher}', 'pseudo_label=0',
                                             steps, 'batch_size=8']), verbose=False)
    before = _digest(teacher)
    assert main(['distill', '--teacher', str(teacher), '--out', str(tmp_path / 's'), '--arm', 'inherit', steps,
                 'batch_size=8']) == 0
    assert 'student:' in capsys.readouterr().out
    assert _digest(teacher) == before
    r = json.loads((tmp_path / 's' / 'results.json').read_text())
    assert r['distill']['arm'] == 'inherit' and r['distill']['not_inherited'] == {'contrastive': [], 'vqa': [],
                                                                                   'caption': []}
    assert r['costs']['params']['vqa'] < 0.35 * r['teacher_costs']['params']['vqa']
    assert r['config']['vision_dim'] == 48 and 'CIDEr' in r['caption'] and 'overall' in r['vqa']
    capsys.readouterr()
    assert main(['distill', '--teacher', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x')]) == 1
    assert 'not a run directory' in capsys.readouterr().err
