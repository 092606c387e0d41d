"""Both official VQA rule sets against reference implementations written from each script, on fuzzed answers.

The references follow the structure of GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, statement
by statement: `Eval2017` the 2017 script (its Python 3 port, branch feature/update_style), `EvalMaster` the master
branch after the 2021 commit "Fixed processing answers bug". They keep the scripts' habits (answer dicts mutated in
place, annotators left out by dict inequality, `manualMap.setdefault`) so that any shortcut the library takes is
tested against them, not assumed. Only the contraction table is shared with the library (data, not logic).
"""
import copy
import random
import re

import pytest

from mmkt_lib import metrics as M
from mmkt_lib.data import load_vqa, vqa_paths
from mmkt_lib.metrics import VQA_RULES, normalize_answer, vqa_accuracy, vqa_score
from mmkt_lib.vqa import AnswerVocab


class _EvalBase:
    "The helpers both versions of vqaEval.py share."
    def __init__(self):
        self.contractions = dict(M._CONTRACTIONS)
        self.manualMap = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5',
                          'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
        self.articles = ['a', 'an', 'the']
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
                      '?', '!']

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, '')
            else:
                outText = outText.replace(p, ' ')
        outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        for word in inText.lower().split():
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return ' '.join(outText)

    def accuracy(self, answers, resAns):
        "The leave-one-annotator-out loop, with the script's comparison `same`."
        gtAcc = []
        for gtAnsDatum in answers:
            otherGTAns = [item for item in answers if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if self.same(item['answer'], resAns)]
            gtAcc.append(min(1, float(len(matchingAns)) / 3))
        return float(sum(gtAcc)) / len(gtAcc)


class Eval2017(_EvalBase):
    "vqaEval.py as of 2017: the prediction always normalised, ground truth punctuation-processed when answers differ."
    def same(self, gt, res): return gt == res

    def score(self, resAns, gts):
        answers = copy.deepcopy(gts)
        resAns = resAns.replace('\n', ' ').replace('\t', ' ').strip()
        resAns = self.processPunctuation(resAns)
        resAns = self.processDigitArticle(resAns)
        gtAnswers = [ans['answer'] for ans in answers]
        if len(set(gtAnswers)) > 1:
            for ansDic in answers:
                ansDic['answer'] = self.processPunctuation(ansDic['answer'])
        return self.accuracy(answers, resAns)


class EvalMaster(_EvalBase):
    "vqaEval.py on master since 2021: everything normalised, but only when the answers differ; lower-cased match."
    def same(self, gt, res): return gt.lower() == res.lower()

    def score(self, resAns, gts):
        answers = copy.deepcopy(gts)
        for ansDic in answers:
            ansDic['answer'] = ansDic['answer'].replace('\n', ' ').replace('\t', ' ').strip()
        resAns = resAns.replace('\n', ' ').replace('\t', ' ').strip()
        gtAnswers = [ans['answer'] for ans in answers]
        if len(set(gtAnswers)) > 1:
            for ansDic in answers:
                ansDic['answer'] = self.processPunctuation(ansDic['answer'])
                ansDic['answer'] = self.processDigitArticle(ansDic['answer'])
            resAns = self.processPunctuation(resAns)
            resAns = self.processDigitArticle(resAns)
        return self.accuracy(answers, resAns)


REFERENCE = {'2017': Eval2017(), 'master': EvalMaster()}

_WORDS = ['2', 'two', 'Two', 'none', '0', 'ten', '10', 'yes', 'Yes', 'no', 'red', 'Red', 'a', 'an', 'the', 'The',
          'dont', "don't", 'isnt', 'Im', 'table', 'cloth', 'tablecloth', '1,000', '1000', '3.5', 'x']
_MARKS = ['', '.', '!', '?', ',', '-', '/', '(', ')', '"', ';', '..', '\n', '\t', ' ']


def _fuzz_answer(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) + (rng.choice(_MARKS) if rng.random() < 0.3 else '') for _ in range(rng.randint(1, 3))]
    sep = rng.choice([' ', ' ', '-', '/', '  '])
    pad = rng.choice(['', ' ', '\t', '\n '])
    return pad + sep.join(words) + rng.choice(['', '', '.', '!', ' ', '\n'])


def _variant(rng: random.Random, base: str) -> str:
    "How an annotator might write `base` differently: case, a mark, an article, a number word, stray whitespace."
    words = {'2': 'two', '0': 'none', '10': 'ten', "don't": 'dont', "isn't": 'isnt'}
    return rng.choice([base, base.capitalize(), base.upper(), base + '.', base + '!', 'a ' + base, 'the ' + base,
                       words.get(base, base), ' ' + base + '\n', base.replace(' ', '-'), base.replace(' ', '/')])


def _fuzz_case(rng: random.Random):
    "Ten annotators (unanimous, nearly unanimous or split) writing variants of a few answers, and a prediction."
    bases = [rng.choice(['2', '0', '10', 'yes', 'no', 'red', "don't", "isn't", 'table cloth', '1,000', '3.5'])
             for _ in range(rng.randint(1, 3))]
    pool = [_variant(rng, b) for b in bases for _ in range(2)] + [_fuzz_answer(rng)]
    kind = rng.random()
    if kind < 0.3: gts = [pool[0]] * 10
    elif kind < 0.6: gts = [pool[0]] * 8 + [rng.choice(pool) for _ in range(2)]
    else: gts = [rng.choice(pool) for _ in range(10)]
    pred = rng.choice(pool + [_variant(rng, bases[0]), _fuzz_answer(rng), normalize_answer(pool[0])])
    return pred, [{'answer': a, 'answer_confidence': 'yes', 'answer_id': i + 1} for i, a in enumerate(gts)]


@pytest.mark.parametrize('rules', sorted(VQA_RULES))
def test_rule_set_matches_its_script_on_fuzzed_answers(rules):
    rng = random.Random(0 if rules == '2017' else 1)
    ref = REFERENCE[rules]
    n_scored = 0
    for _ in range(4000):
        pred, gts = _fuzz_case(rng)
        exp = ref.score(pred, gts)
        got = vqa_score(pred, [g['answer'] for g in gts], rules)
        assert got == pytest.approx(exp, abs=1e-12), (rules, pred, [g['answer'] for g in gts])
        n_scored += exp > 0
    assert n_scored > 400  # the fuzzing reaches matches, not only zeros


def test_the_two_rule_sets_differ_on_fuzzed_answers():
    "A sanity check on the fuzzing: the rule sets disagree often, in both directions."
    rng = random.Random(2)
    diffs = [REFERENCE['master'].score(p, g) - REFERENCE['2017'].score(p, g) for p, g in
             (_fuzz_case(rng) for _ in range(2000))]
    assert sum(d > 0 for d in diffs) > 200 and sum(d < 0 for d in diffs) > 20


@pytest.mark.parametrize('pred, gts, s2017, smaster', [   # hand-derived
    ('two', ['2'] * 10, 1.0, 0.0),            # 2017 normalises the prediction; master leaves unanimous questions alone
    ('yes.', ['yes'] * 10, 1.0, 0.0),
    ('yes', ['Yes'] * 10, 0.0, 1.0),          # master compares lower-cased
    ('two', ['2'] * 2 + ['two'] * 8, 0.6, 1.0),  # master digit-normalises the annotators too
    ('red', ['a red'] * 2 + ['red'] * 8, 1.0, 1.0),
    ('Red', ['red'] * 10, 1.0, 1.0),
])
def test_rule_sets_hand_derived(pred, gts, s2017, smaster):
    assert vqa_score(pred, gts, '2017') == pytest.approx(s2017)
    assert vqa_score(pred, gts, 'master') == pytest.approx(smaster)


def test_results_name_their_rule_set_and_unknown_rules_fail(shapes):
    qp, ap = vqa_paths(shapes, 'val')
    _, anns = load_vqa(qp, ap)
    res = [{'question_id': q, 'answer': a['multiple_choice_answer']} for q, a in anns.items()]
    assert vqa_accuracy(qp, ap, res)['rules'] == 'master'
    assert vqa_accuracy(qp, ap, res, rules='2017')['rules'] == '2017'
    with pytest.raises(ValueError, match=r"unknown VQA rule set 'lavis': choose one of \['2017', 'master'\]"):
        vqa_accuracy(qp, ap, res, rules='lavis')


def test_canonical_predictions_score_the_same_under_both_rules_on_shapescenes(shapes):
    "Every answer of the vocabulary, as a prediction for every question: ShapeScenes' variants never split the rules."
    _, anns = load_vqa(*vqa_paths(shapes, 'train'))
    vocab = AnswerVocab.from_annotations(anns)
    qp, ap = vqa_paths(shapes, 'val')
    _, val = load_vqa(qp, ap)
    assert any(len({x['answer'] for x in a['answers']}) > 1 for a in val.values())  # variants are present
    for ans in vocab.itos:
        res = [{'question_id': q, 'answer': ans} for q in val]
        a, b = vqa_accuracy(qp, ap, res, per_question=True), vqa_accuracy(qp, ap, res, per_question=True, rules='2017')
        assert a['per_question'] == b['per_question'], ans
