"""Pseudo-labelling and self-training (chapters 16a, 16b): thresholding, the semi-supervised split, no leak of withheld labels,
one round end to end through `mmkt train`."""
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmkt_lib.core import load_json, save_json
from mmkt_lib.vqa import AnswerVocab
from mmkt_lib.data import load_vqa, make_shape_scenes, vqa_paths
from mmkt_lib.pseudo import (make_semi_supervised, pseudo_annotation, select_confident, split_labelled, visible_labels,
                             withheld_labels, write_pseudo_split)

BIN = Path(sys.executable).parent


def test_select_confident_keeps_exactly_the_confident_items():
    rng = random.Random(0)
    preds = [{'question_id': i, 'confidence': rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, rng.random()])} for i in range(500)]
    for t in (0.0, 0.25, 0.5, 0.5000001, 0.75, 0.999, 1.0, 1.5):
        kept = select_confident(preds, t)
        assert [p['question_id'] for p in kept] == [p['question_id'] for p in preds if p['confidence'] >= t]
        assert all(p['confidence'] >= t for p in kept)
    assert len(select_confident(preds, 0.5)) == sum(p['confidence'] >= 0.5 for p in preds) > 0


def test_pseudo_annotation_hard_and_soft_targets():
    vocab = AnswerVocab(['2', '3', 'yes'])
    pred = {'question_id': 1, 'image_id': 9, 'answer': '2', 'confidence': 0.9, 'top': [['2', 0.9], ['3', 0.3], ['yes', 0.1]]}
    hard = pseudo_annotation(pred, 'How many circles are there?', ['how many', 'how'])
    soft = pseudo_annotation(pred, 'How many circles are there?', ['how many', 'how'], soft=True)
    assert hard['question_type'] == 'how many' and hard['answer_type'] == 'number' and hard['pseudo']
    assert vocab.soft_scores([a['answer'] for a in hard['answers']]) == {0: 1.0}
    assert vocab.soft_scores([a['answer'] for a in soft['answers']]) == {0: 1.0, 1: 1 / 3}
    assert pseudo_annotation(pred, 'Is it red?', ['how'])['question_type'] == 'none of the above'


def test_config_checks_the_pseudo_labelling_fields():
    from mmkt_lib.config import load_config
    with pytest.raises(ValueError, match='labelled fraction'): load_config('shapes_tiny', ['pseudo_label=1.5'])
    with pytest.raises(ValueError, match="self-training needs the .vqa. and .caption. stages"): load_config('shapes_tiny', ['stages=[vqa]'])
    with pytest.raises(ValueError, match='pseudo_filter'): load_config('shapes_tiny', ['pseudo_filter=cider'])
    with pytest.raises(ValueError, match='pseudo_student'): load_config('shapes_tiny', ['pseudo_student=[decoder]'])
    assert load_config('shapes_tiny', ['stages=[vqa]', 'pseudo_label=0']).stages == ['vqa']


def test_semi_supervised_split_holds_no_withheld_label(shapes, tmp_path):
    man = make_semi_supervised(shapes, tmp_path / 'semi', 0.25, seed=3)
    semi = tmp_path / 'semi'
    lab, unl = split_labelled(_train_ids(shapes), 0.25, seed=3)
    assert (man['labelled_images'], man['unlabelled_images']) == (len(lab), len(unl)) == (30, 90)
    seen = visible_labels(semi)
    assert seen['image_ids'] == set(lab)
    _, anns = load_vqa(*vqa_paths(shapes, 'train'))
    assert seen['question_ids'] == {q for q, a in anns.items() if a['image_id'] in set(lab)}
    assert vqa_paths(semi, 'unlabelled')[1] is None
    q_anns, caps = withheld_labels(semi)                     # the measuring side does see them
    assert {a['image_id'] for a in q_anns.values()} == set(caps) == set(unl)
    # the tokenizer is trained on visible text only: poisoning withheld captions leaves it unchanged
    tok = (semi / 'tokenizer.json').read_bytes()
    poisoned = tmp_path / 'poisoned'
    shutil.copytree(shapes, poisoned)
    _poison(poisoned, set(unl))
    make_semi_supervised(poisoned, tmp_path / 'semi2', 0.25, seed=3)
    assert (tmp_path / 'semi2' / 'tokenizer.json').read_bytes() == tok


def test_write_pseudo_split_rejects_labelled_ids(shapes, tmp_path):
    make_semi_supervised(shapes, tmp_path / 'semi', 0.5, seed=0)
    q_lab, _ = load_vqa(*vqa_paths(tmp_path / 'semi', 'labelled'))
    bad = {'question_id': q_lab[0]['question_id'], 'image_id': q_lab[0]['image_id'], 'answer': 'yes', 'confidence': 1.0, 'top': []}
    with pytest.raises(Exception, match='not unlabelled questions'): write_pseudo_split(tmp_path / 'semi', 'p', [bad], {})
    with pytest.raises(Exception, match='not unlabelled images'):
        write_pseudo_split(tmp_path / 'semi', 'p', [], {q_lab[0]['image_id']: 'a caption'})


def _train_ids(root): return [im['id'] for im in load_json(Path(root) / 'annotations' / 'captions_train.json')['images']]


def _poison(root: Path, image_ids: set):
    "Replace every answer and caption of `image_ids` in the train split of `root` by a word that appears nowhere else."
    cp = root / 'annotations' / 'captions_train.json'
    c = load_json(cp)
    for a in c['annotations']:
        if a['image_id'] in image_ids: a['caption'] = 'zzleak zzleak zzleak zzleak.'
    save_json(c, cp)
    _, ap = vqa_paths(root, 'train')
    d = load_json(ap)
    for a in d['annotations']:
        if a['image_id'] in image_ids:
            a['answers'] = [{'answer': 'zzleak', 'answer_confidence': 'yes', 'answer_id': j + 1} for j in range(10)]
            a['multiple_choice_answer'] = 'zzleak'
    save_json(d, ap)


def _train(tmp: Path, data: Path, extra=(), ok=True):
    env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", 'OMP_NUM_THREADS': '1'}
    args = ['mmkt', 'train', '--config', 'shapes_tiny', f'data={data}', f'out={tmp / "run"}', 'device=cpu', 'n_train=96',
            'n_val=16', 'n_test=16', 'batch_size=16', 'pseudo_label=0.25', 'pseudo_threshold=0.1', 'pseudo_rounds=2', 'eval_every=0', 'log_every=5',
            'steps={contrastive: 4, pretrain: 4, vqa: 12, caption: 8}', 'pseudo_steps={}', *extra]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if not ok: return r
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / 'run' / 'results.json').read_text()), r.stdout


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    "One self-training round via `mmkt train`, on clean data and on data whose withheld labels are poisoned."
    a, b = tmp_path_factory.mktemp('clean'), tmp_path_factory.mktemp('poisoned')
    make_shape_scenes(a / 'data', 96, 16, 16, seed=0)
    shutil.copytree(a / 'data', b / 'data')
    _, unl = split_labelled(_train_ids(a / 'data'), 0.25, seed=0)
    _poison(b / 'data', set(unl))
    return (a, *_train(a, a / 'data')), (b, *_train(b, b / 'data'))


def test_one_round_end_to_end_through_mmkt_train(two_runs):
    (a, res, out), _ = two_runs
    p = res['pseudo']
    for k in ('label_fraction', 'teacher_vqa', 'student_vqa', 'supervised_vqa', 'precision'): assert p[k] is not None, k
    assert p['label_fraction'] == 0.25 and (p['labelled_images'], p['unlabelled_images']) == (24, 72)
    assert list(p['models']) == ['teacher', 'student1', 'student2', 'supervised'] and p['supervised_vqa'] == res['vqa']['overall']
    assert [r['labeller'] for r in p['rounds']] == ['teacher', 'student1'] and p['student_vqa'] == p['models']['student2']['vqa']
    r = p['rounds'][0]
    n_unl = len(load_vqa(*vqa_paths(a / 'run' / 'pseudo' / 'data', 'unlabelled'))[0])
    n_lab = len(load_vqa(*vqa_paths(a / 'run' / 'pseudo' / 'data', 'labelled'))[0])
    assert r['pseudo_answers'] == round(r['answer_coverage'] * n_unl / 100) > 0 and 0 <= r['answer_precision'] <= 100
    assert r['pseudo_captions'] <= 72 and 'self-training with 25% of the labels' in out
    for f in ('results.json', 'pseudo.png', 'teacher/vqa.safetensors', 'student1/vqa.safetensors', 'student2/caption.safetensors',
              'data/semi.json', 'data/v2_shapes_pseudo2_annotations.json'):
        assert (a / 'run' / 'pseudo' / f).is_file(), f
    # the student trained on the pseudo split: labelled + kept pseudo-answers
    qs, anns = load_vqa(*vqa_paths(a / 'run' / 'pseudo' / 'data', 'pseudo1'))
    assert sum(x.get('pseudo', False) for x in anns.values()) == r['pseudo_answers'] and len(qs) == n_lab + r['pseudo_answers']


def test_withheld_labels_never_reach_training(two_runs):
    """Poisoning every withheld answer and caption changes the measured precision but not one bit of any trained
    weight nor of the pseudo-labelled split: the withheld labels reach training only through the teacher."""
    (a, ra, _), (b, rb, _) = two_runs
    pa, pb = a / 'run' / 'pseudo', b / 'run' / 'pseudo'
    files = sorted(p.relative_to(pa) for p in pa.rglob('*.safetensors'))
    assert len([f for f in files if len(f.parts) == 2]) == 12    # teacher and two students, four stages each (+ checkpoints)
    for f in files:
        ta, tb = load_file(pa / f), load_file(pb / f)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f"{f} differs: withheld labels leaked"
    for f in ('annotations/captions_pseudo1.json', 'v2_OpenEnded_shapes_pseudo1_questions.json', 'v2_shapes_pseudo1_annotations.json',
              'annotations/captions_pseudo2.json', 'v2_shapes_pseudo2_annotations.json', 'tokenizer.json'):
        assert (pa / 'data' / f).read_bytes() == (pb / 'data' / f).read_bytes(), f
    assert ra['pseudo']['teacher_vqa'] == rb['pseudo']['teacher_vqa'] and ra['pseudo']['student_vqa'] == rb['pseudo']['student_vqa']
    # the poison did reach the measurement (and the fully supervised run, which may read every label)
    assert rb['pseudo']['precision'] == 0.0 < ra['pseudo']['precision']
    assert rb['pseudo']['rounds'][0]['caption_cider_all'] == 0.0


def test_rerun_with_other_settings_is_refused(two_runs):
    "Finished teachers and students are reused on a rerun, so a rerun with other pseudo-labelling settings must stop."
    (a, *_), _ = two_runs
    r = _train(a, a / 'data', ['pseudo_threshold=0.4'], ok=False)
    assert r.returncode == 1 and 'holds a self-training run with other settings (pseudo_threshold)' in r.stderr
