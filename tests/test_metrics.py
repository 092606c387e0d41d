"""VQA accuracy (official semantics), COCO caption metrics against direct pycocoevalcap calls, validation errors."""
import json
import warnings
from pathlib import Path

import pytest

from mmkt_lib.core import DataError
from mmkt_lib.data import load_coco_captions, load_vqa, vqa_paths
from mmkt_lib.metrics import normalize_answer
from mmkt_lib import metrics as M
from mmkt_lib.metrics import caption_metrics, vqa_accuracy


# ---------------------------------------------------------------- VQA

@pytest.mark.parametrize('raw, norm', [
    ('Two', '2'), ('two.', '2'), ('the dog', 'dog'), ('x/y', 'x y'), ('x / y', 'x y'), ('a/b', 'b'),
    ('1,000', '1000'), ('yes!', 'yes'), ('3.5', '3.5'), ('end.', 'end'), ('isnt', "isn't"), ('dont', "don't"),
    ("isn't", "isn't"), ('well-known', 'well known'), ('(red)', 'red'), ('none', '0'), ('ten', '10'),
    ('  Left\t', 'left'), ('one', '1'), ('an apple', 'apple'), ('x' + '.' * 40, 'x' + '.' * 8)])
def test_normalisation_cases(raw, norm):
    "Hand-derived from vqaEval.py's rules (the last: re.UNICODE lands in re.sub's count, so at most 32 periods go)."
    assert normalize_answer(raw) == norm


def _ann(qid, answers, atype='other', qtype='what is', family=None):
    a = {'question_id': qid, 'image_id': qid // 10, 'question_type': qtype, 'answer_type': atype,
         'multiple_choice_answer': answers[0], 'answers': [{'answer': x, 'answer_id': i + 1} for i, x in enumerate(answers)]}
    if family: a['family'] = family
    return a


CASES = [  # (ground-truth answers, prediction, expected accuracy in percent under the 2017 rules, hand-derived)
    (['2'] * 10, 'Two', 100.0),                       # prediction normalised to a digit
    (['two'] * 10, '2', 0.0),                         # ground truth is not digit-normalised
    (['yes'] * 10, 'Yes.', 100.0),
    (['Yes.'] * 10, 'yes', 0.0),                      # identical ground truths are left as they are
    (['yes.'] * 8 + ['no'] * 2, 'yes', 100.0),        # differing ones get the punctuation step
    (['red'] * 3 + ['blue'] * 7, 'red', 90.0),        # 7 x min(3/3,1) + 3 x min(2/3,1), over 10
    (['red'] * 2 + ['blue'] * 8, 'red', 60.0),        # 8 x 2/3 + 2 x 1/3, over 10
    (['red'] + ['blue'] * 9, 'red', 30.0),            # 9 x 1/3, over 10
    (['red'] * 10, 'green', 0.0),
    (['table cloth'] * 4 + ['tablecloth'] * 6, 'the table-cloth', 100.0),  # '-' -> space, 'the' dropped: 4 annotators
    (['table cloth'] * 4 + ['tablecloth'] * 6, 'tablecloth!', 100.0),
    (['1000'] * 5 + ['1,000'] * 5, '1,000', 100.0),   # gt '1,000' -> '1000' (commas next to digits are deleted)
]


MASTER = {0: 0.0, 2: 0.0}  # where master's rules differ: a unanimous ground truth normalises nothing ("two", "yes.")


@pytest.mark.parametrize('rules', ['2017', 'master'])
def test_vqa_accuracy_fixture_of_edge_cases(rules):
    assert normalize_answer('the table-cloth') == 'table cloth'  # punctuation first, then the article goes
    qs = [{'question_id': 10 * (i + 1), 'image_id': i + 1, 'question': f'q{i}?'} for i in range(len(CASES))]
    anns = [_ann(q['question_id'], gt, family='f' + str(i % 2)) for i, (q, (gt, _, _)) in enumerate(zip(qs, CASES))]
    res = [{'question_id': q['question_id'], 'answer': pred} for q, (_, pred, _) in zip(qs, CASES)]
    out = vqa_accuracy(qs, anns, res, per_question=True, rules=rules)
    exp = [MASTER.get(i, c[2]) if rules == 'master' else c[2] for i, c in enumerate(CASES)]
    for q, (_, pred, _), e in zip(qs, CASES, exp):
        assert round(100 * out['per_question'][q['question_id']], 6) == pytest.approx(e), (pred, e)
    assert out['overall'] == round(sum(exp) / len(exp), 2)
    assert out['per_family'] == {'f0': round(sum(exp[0::2]) / len(exp[0::2]), 2), 'f1': round(sum(exp[1::2]) / len(exp[1::2]), 2)}
    assert out['per_answer_type'] == {'other': out['overall']} and out['per_question_type'] == {'what is': out['overall']}


def test_vqa_accuracy_from_official_files(shapes, tmp_path):
    qp, ap = vqa_paths(shapes, 'val')
    _, anns = load_vqa(qp, ap)
    oracle = [{'question_id': q, 'answer': a['multiple_choice_answer']} for q, a in anns.items()]
    (tmp_path / 'res.json').write_text(json.dumps(oracle))
    out = vqa_accuracy(qp, ap, tmp_path / 'res.json')
    assert out['overall'] == 100.0 and set(out['per_family']) == {'existence', 'counting', 'attribute', 'spatial', 'comparison'}
    assert set(out['per_answer_type']) == {'yes/no', 'number', 'other'}
    wrong = [{'question_id': q, 'answer': 'purple' if a['answer_type'] == 'other' else 'no'} for q, a in anns.items()]
    low = vqa_accuracy(qp, anns, wrong)  # annotations already loaded ({question_id: annotation}) work too
    assert low['overall'] < 60 and low['per_answer_type']['number'] == 0.0


def test_vqa_accuracy_errors(shapes, tmp_path):
    qp, ap = vqa_paths(shapes, 'val')
    _, anns = load_vqa(qp, ap)
    full = [{'question_id': q, 'answer': 'yes'} for q in anns]
    first = min(anns)
    with pytest.raises(DataError, match=rf'no answer for 1 question\(s\), e.g. question_id\(s\) \[{first}\]'):
        vqa_accuracy(qp, ap, [r for r in full if r['question_id'] != first])
    with pytest.raises(DataError, match=r'unknown question_id\(s\) \[7\]'): vqa_accuracy(qp, ap, full + [{'question_id': 7, 'answer': 'x'}])
    with pytest.raises(DataError, match=rf'duplicate answers for question_id\(s\) \[{first}\]'): vqa_accuracy(qp, ap, full + full[:1])
    with pytest.raises(DataError, match='answer must be a string'): vqa_accuracy(qp, ap, [{**full[0], 'answer': 3}] + full[1:])
    (tmp_path / 'bad.json').write_text('[{"question_id": 1, "answer": ')
    with pytest.raises(DataError, match='bad.json: malformed JSON'): vqa_accuracy(qp, ap, tmp_path / 'bad.json')
    with pytest.raises(DataError, match='expected a list'): vqa_accuracy(qp, ap, {'question_id': 1})


# ---------------------------------------------------------------- captions

def _direct(ann_file, results):
    "BLEU and CIDEr exactly as pycocoevalcap's COCOEvalCap computes them (its scorers, called directly)."
    import contextlib, io
    from pycocotools.coco import COCO
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file)); res = coco.loadRes(results)
    ids = res.getImgIds()
    tok = PTBTokenizer()
    gts = tok.tokenize({i: coco.imgToAnns[i] for i in ids}); hyp = tok.tokenize({i: res.imgToAnns[i] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, hyp, verbose=0)
    cider, _ = Cider().compute_score(gts, hyp)
    return {**{f'Bleu_{n + 1}': bleu[n] for n in range(4)}, 'CIDEr': cider}


def _captions(shapes):
    ann = shapes / 'annotations' / 'captions_val.json'
    coco = json.loads(ann.read_text())
    first = {}
    for a in coco['annotations']: first.setdefault(a['image_id'], a['caption'])
    # candidates: another image's first caption, so the scores are far from perfect
    ids = sorted(first)
    return ann, [{'image_id': i, 'caption': first[ids[(k + 1) % len(ids)]]} for k, i in enumerate(ids)]


def test_bleu_and_cider_equal_direct_pycocoevalcap(shapes):
    ann, results = _captions(shapes)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ours = caption_metrics(ann, results, metrics=('Bleu', 'CIDEr', 'ROUGE_L'), per_image=True)
    ref = _direct(ann, results)
    for k, v in ref.items(): assert ours[k] == pytest.approx(v, abs=1e-12), k
    assert 0 < ours['CIDEr'] < 3 and 0 < ours['Bleu_4'] < 1
    assert set(ours['per_image']) == {r['image_id'] for r in results}


def test_meteor_and_spice_skip(shapes):
    ann, results = _captions(shapes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = caption_metrics(ann, results, metrics=('METEOR', 'SPICE'))
    assert 0 < out['METEOR'] < 1
    if M.spice_missing_jars():
        assert 'SPICE' not in out
        assert any('SPICE skipped' in str(w.message) and 'stanford-corenlp-3.6.0.jar' in str(w.message) for w in caught)


def test_spice_failure_is_a_warning_not_a_crash(shapes, tmp_path, monkeypatch):
    "A broken SPICE installation (here: a jar that is not one) is skipped with a warning."
    fake = tmp_path / 'pycocoevalcap'; (fake / 'spice' / 'lib').mkdir(parents=True)
    for p in ('spice/spice-1.0.jar', 'spice/lib/stanford-corenlp-3.6.0.jar', 'spice/lib/stanford-corenlp-3.6.0-models.jar'):
        (fake / p).write_bytes(b'not a jar')
    monkeypatch.setattr(M, '_pycocoevalcap_dir', lambda: fake)
    assert M.spice_missing_jars() == []
    ann, results = _captions(shapes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = caption_metrics(ann, results, metrics=('SPICE',), spice_timeout=120)
    assert 'SPICE' not in out and any('SPICE skipped: the SPICE jar failed' in str(w.message) for w in caught)


def test_caption_result_errors(shapes, monkeypatch):
    ann, results = _captions(shapes)
    with pytest.raises(DataError, match=r'no caption for 1 annotated image\(s\)'): caption_metrics(ann, results[1:])
    assert 'CIDEr' in caption_metrics(ann, results[1:], metrics=('CIDEr',), allow_subset=True)
    with pytest.raises(DataError, match=r'several captions for image_id\(s\)'): caption_metrics(ann, results + results[:1])
    with pytest.raises(DataError, match=r'not in the annotations, e.g. \[12345\]'):
        caption_metrics(ann, results + [{'image_id': 12345, 'caption': 'x'}])
    with pytest.raises(DataError, match=r"results\[0\]: missing field 'caption'"): caption_metrics(ann, [{'image_id': 1}])
    with pytest.raises(ValueError, match='unknown metric'): caption_metrics(ann, results, metrics=('BLEURT',))
    monkeypatch.setattr(M.shutil, 'which', lambda name: None)
    with pytest.raises(RuntimeError, match='caption metrics need Java'): caption_metrics(ann, results, metrics=('CIDEr',))


def test_caption_benchmark_small_run():
    "Smoke test of benchmarks/caption_metrics.py on 30 images (its 5,000-image timing is recorded in RESULTS.md)."
    import subprocess, sys
    script = Path(__file__).parent.parent / 'benchmarks' / 'caption_metrics.py'
    r = subprocess.run([sys.executable, str(script), '--n', '30'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert '| caption_metrics | 30 captions x 5 references |' in r.stdout


def test_caption_truth_on_known_captions():
    "CHAIR, counts and relations on hand-written captions about a hand-made scene."
    from mmkt_lib.truth import caption_truth
    scene = {'image_id': 1, 'objects': [
        {'size': 'large', 'color': 'red', 'shape': 'circle', 'pixel_coords': [10, 30]},
        {'size': 'small', 'color': 'blue', 'shape': 'square', 'pixel_coords': [50, 10]},
        {'size': 'small', 'color': 'red', 'shape': 'square', 'pixel_coords': [30, 50]}]}
    scenes = [{**scene, 'image_id': i} for i in range(1, 5)]
    caps = {1: 'A large red circle to the left of a small blue square.',   # 2 mentions, true relation
            2: 'A small blue square to the left of a large red circle.',   # 2 mentions, false relation
            3: 'Three objects: two squares and a green triangle.',         # counts true; green triangle invented
            4: 'A large blue square above a small red square.'}            # large blue square invented; relation false
    t = caption_truth(caps, scenes)
    # mentions: 2 + 2 + (squares, green triangle) 2 + 2 = 8, of which 2 hallucinated; captions 3 and 4 hallucinate
    assert t['CHAIR_i'] == 25.0 and t['CHAIR_s'] == 50.0
    assert t['count_accuracy'] == 100.0 and t['relation_accuracy'] == round(100 / 3, 2)
    with pytest.raises(DataError, match='no scene for image_id'):
        caption_truth({9: 'a red circle'}, scenes)


def test_reference_captions_are_true_and_other_images_captions_are_not(shapes):
    from mmkt_lib.truth import caption_truth
    refs = load_coco_captions(shapes / 'annotations' / 'captions_val.json')['annotations']
    by_image = {}
    for a in refs:
        by_image.setdefault(a['image_id'], []).append(a['caption'])
    ids = sorted(by_image)
    for k in range(5):
        t = caption_truth({i: by_image[i][k] for i in ids}, shapes / 'scenes_val.json')
        assert t['CHAIR_i'] in (0.0, None) and t['CHAIR_s'] == 0.0, t
        assert t['count_accuracy'] in (100.0, None) and t['relation_accuracy'] in (100.0, None), t
    other = caption_truth({i: by_image[j][1] for i, j in zip(ids, ids[1:] + ids[:1])}, shapes / 'scenes_val.json')
    assert other['CHAIR_i'] > 30 and other['CHAIR_s'] > 30
