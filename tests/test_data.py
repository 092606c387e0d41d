"""ShapeScenes generation, the COCO / VQA v2 readers, tokenizer, answer vocabulary and collate functions."""
import contextlib
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from mmkt_lib.core import DataError
from mmkt_lib.vqa import AnswerVocab
from mmkt_lib.data import (PRESETS, CaptionCollate, CaptionDataset, VQACollate, VQADataset, image_transform,
                           load_coco_captions, load_vqa, make_shape_scenes, mentions_left_right, vqa_paths)
from mmkt_lib.text import data_tokenizer, load_tokenizer
from mmkt_lib.metrics import normalize_answer, prior_accuracy, vqa_score

SPLITS = ('train', 'val', 'test')


def files_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


# ---------------------------------------------------------------- the files and their formats

def test_captions_load_with_pycocotools(shapes):
    for split, n in (('train', 120), ('val', 40), ('test', 40)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(shapes / 'annotations' / f'captions_{split}.json'))
            res = coco.loadRes([{'image_id': i, 'caption': 'a red circle.'} for i in coco.getImgIds()])
        assert len(coco.getImgIds()) == n
        assert all(len(coco.imgToAnns[i]) == 5 for i in coco.getImgIds())
        assert len(res.getAnnIds()) == n
        for im in coco.dataset['images']:
            assert (shapes / split / im['file_name']).is_file()
            assert (im['width'], im['height']) == (64, 64)


def test_every_question_has_ten_answers_and_a_valid_type(shapes):
    for split in SPLITS:
        qs, anns = load_vqa(*vqa_paths(shapes, split))
        assert len(qs) == len(anns) == 10 * {'train': 120, 'val': 40, 'test': 40}[split]
        for q in qs:
            a = anns[q['question_id']]
            assert a['image_id'] == q['image_id'] and q['question'].endswith('?')
            assert len(a['answers']) == 10 and [x['answer_id'] for x in a['answers']] == list(range(1, 11))
            assert a['answer_type'] in ('yes/no', 'number', 'other')
            assert a['family'] in ('existence', 'counting', 'attribute', 'spatial', 'comparison')
            assert q['question'].lower().startswith(a['question_type'])
            assert sum(x['answer'] == a['multiple_choice_answer'] for x in a['answers']) >= 8
            assert vqa_score(a['multiple_choice_answer'], [x['answer'] for x in a['answers']]) == 1.0
            expected_type = {'existence': 'yes/no', 'comparison': 'yes/no', 'counting': 'number'}.get(a['family'], 'other')
            assert a['answer_type'] == expected_type


def test_some_answers_are_equivalent_variants(shapes):
    _, anns = load_vqa(*vqa_paths(shapes, 'train'))
    variants = [x['answer'] for a in anns.values() for x in a['answers'] if x['answer'] != a['multiple_choice_answer']]
    assert variants, 'no annotator variants at all'
    mc = {normalize_answer(a['multiple_choice_answer']) for a in anns.values()}
    assert all(normalize_answer(v) in mc for v in variants)      # variants are equivalent after normalisation
    assert any(v in ('one', 'two', 'three', 'four', 'five', 'zero') for v in variants)


def test_splits_are_disjoint(shapes):
    ids, names, pixels = {}, {}, {}
    for split in SPLITS:
        coco = load_coco_captions(shapes / 'annotations' / f'captions_{split}.json')
        ids[split] = {im['id'] for im in coco['images']}
        names[split] = {im['file_name'] for im in coco['images']}
        pixels[split] = {hashlib.md5(np.asarray(Image.open(shapes / split / n)).tobytes()).hexdigest() for n in names[split]}
        qs, _ = load_vqa(*vqa_paths(shapes, split))
        assert {q['image_id'] for q in qs} == ids[split]
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not ids[a] & ids[b] and not names[a] & names[b] and not pixels[a] & pixels[b]


def test_same_seed_identical_files_other_seed_differs(tmp_path):
    make_shape_scenes(tmp_path / 'a', 15, 5, 5, seed=7)
    make_shape_scenes(tmp_path / 'b', 15, 5, 5, seed=7)
    make_shape_scenes(tmp_path / 'c', 15, 5, 5, seed=8)
    a, b, c = (files_digest(tmp_path / k) for k in 'abc')
    assert a == b and len(a) > 25
    assert a.keys() == c.keys() and a != c


def test_more_validation_images_leave_train_unchanged(tmp_path):
    make_shape_scenes(tmp_path / 'a', 10, 5, 0, seed=1)
    make_shape_scenes(tmp_path / 'b', 10, 9, 0, seed=1)
    a, b = files_digest(tmp_path / 'a'), files_digest(tmp_path / 'b')
    assert {k: v for k, v in a.items() if k.startswith('train/') or 'train' in k and k.endswith('.json')} == \
           {k: v for k, v in b.items() if k.startswith('train/') or 'train' in k and k.endswith('.json')}


def test_regeneration_is_cached_and_replaced(tmp_path):
    m1 = make_shape_scenes(tmp_path / 'd', 5, 2, 0, seed=0)
    m2 = make_shape_scenes(tmp_path / 'd', 5, 2, 0, seed=0)
    assert m1 == m2
    make_shape_scenes(tmp_path / 'd', 3, 0, 0, seed=1)  # a different request replaces the old files
    assert len(list((tmp_path / 'd' / 'train').iterdir())) == 3 and not (tmp_path / 'd' / 'val').exists()


# ---------------------------------------------------------------- the content is true to the scenes

COUNT_RE = re.compile(r"How many (?:(small|large) )?(?:(red|green|blue|yellow|purple|cyan) )?(circle|square|triangle|object)s")


def test_answers_agree_with_the_scenes(shapes):
    "Recompute counting and existence answers, and the pixels, from scenes_{split}.json."
    scenes = {s['image_id']: s for s in json.loads((shapes / 'scenes_train.json').read_text())['scenes']}
    qs, anns = load_vqa(*vqa_paths(shapes, 'train'))
    checked = Counter()
    for q in qs:
        objs, a = scenes[q['image_id']]['objects'], anns[q['question_id']]
        m = COUNT_RE.match(q['question'])
        if m:
            size, color, shape = m.groups(); shape = None if shape == 'object' else shape
            n = sum((size is None or o['size'] == size) and (color is None or o['color'] == color)
                    and (shape is None or o['shape'] == shape) for o in objs)
            assert a['multiple_choice_answer'] == str(n), q['question']; checked['count'] += 1
        m = re.match(r"What color is the (leftmost|rightmost) (circle|square|triangle|object)\?", q['question'])
        if m:
            group = [o for o in objs if m[2] == 'object' or o['shape'] == m[2]]
            o = sorted(group, key=lambda o: o['pixel_coords'][0])[0 if m[1] == 'leftmost' else -1]
            assert a['multiple_choice_answer'] == o['color'], q['question']; checked['extreme'] += 1
    assert checked['count'] > 50 and checked['extreme'] > 3
    cfg = PRESETS['default']
    for s in list(scenes.values())[:20]:
        px = np.asarray(Image.open(shapes / 'train' / s['image_filename']))
        for o in s['objects']:
            x, y = o['pixel_coords']
            assert tuple(px[int(y), int(x)]) == cfg.colors[o['color']]


def test_answers_are_balanced_and_the_prior_is_weak(shapes):
    _, train = load_vqa(*vqa_paths(shapes, 'train'))
    _, val = load_vqa(*vqa_paths(shapes, 'val'))
    for fam, top in (('existence', 0.6), ('comparison', 0.6)):
        c = Counter(a['multiple_choice_answer'] for a in train.values() if a['family'] == fam)
        assert max(c.values()) / sum(c.values()) < top, (fam, c)
    prior = prior_accuracy(train, val)
    assert prior['overall'] < 45, prior
    assert prior['per_family']['existence'] < 65 and prior['per_family']['counting'] < 45


def test_sort_of_clevr(soc):
    scenes = json.loads((soc / 'scenes_train.json').read_text())['scenes']
    qs, anns = load_vqa(*vqa_paths(soc, 'train'))
    by_image = {s['image_id']: s['objects'] for s in scenes}
    assert all(len(o) == 6 and len({x['color'] for x in o}) == 6 for o in by_image.values())
    assert all({x['shape'] for x in o} <= {'square', 'circle'} for o in by_image.values())
    assert Image.open(next((soc / 'train').iterdir())).size == (75, 75)
    fams = Counter()
    for q in qs:
        a, objs = anns[q['question_id']], by_image[q['image_id']]
        fams[a['family']] += 1
        color = re.search(r"the (\w+) object\b", q['question'])[1]
        o = next(x for x in objs if x['color'] == color)
        others = [x for x in objs if x is not o]
        d = lambda x: np.hypot(x['pixel_coords'][0] - o['pixel_coords'][0], x['pixel_coords'][1] - o['pixel_coords'][1])
        t = a['template']
        expected = {'shape': o['shape'],
                    'horizontal': 'left' if o['pixel_coords'][0] < 37.5 else 'right',
                    'vertical': 'top' if o['pixel_coords'][1] < 37.5 else 'bottom',
                    'closest': min(others, key=d)['shape'], 'furthest': max(others, key=d)['shape'],
                    'count': str(sum(x['shape'] == o['shape'] for x in others))}[t]
        assert a['multiple_choice_answer'] == expected, (q['question'], t)
    assert fams == Counter(non_relational=600, relational=600)


# ---------------------------------------------------------------- readers on the real formats

def test_readers_parse_real_coco_vqa_fixture(coco_mini):
    caps = CaptionDataset(coco_mini, 'val2014', transform=image_transform(32))
    assert len(caps) == 5 and caps[0]['image'].shape == (3, 32, 32) and caps[0]['image_id'] == 42
    per = CaptionDataset(coco_mini, 'val2014', transform=image_transform(32), per_image=True)
    assert [len(per[i]['captions']) for i in range(len(per))] == [3, 2]
    vqa = VQADataset(coco_mini, 'val2014', transform=image_transform(32))
    assert vqa.image_ids == [42, 73] and vqa.n_questions == 3
    item = vqa[0]
    assert item['question_ids'] == [42000, 42001] and item['answer_types'] == ['other', 'number']
    assert item['question_types'] == ['what are the', 'how many'] and item['families'] == [None, None]
    vocab = AnswerVocab.from_annotations(vqa.annotations, top_k=5)
    assert vocab.itos[0] == 'yes'
    tok = _tok(coco_mini)
    batch = VQACollate(tok, vocab)([vqa[0], vqa[1]])
    assert batch['images'].shape == (2, 3, 32, 32)
    assert batch['image_index'].tolist() == [0, 0, 1] and batch['question_ids'].tolist() == [42000, 42001, 73000]
    assert batch['input_ids'].shape[0] == 3 and batch['targets'].shape == (3, len(vocab))
    assert batch['targets'][1, vocab.index('10')].item() == 1.0          # 4 x '10' -> min(4/3, 1)
    assert batch['targets'][0, vocab.index('rack')].item() == 1.0
    cb = CaptionCollate(tok)([caps[0], caps[3]])
    assert cb['input_ids'].shape[0] == 2 and cb['attention_mask'].sum(1).min() > 2


def _tok(root):
    from mmkt_lib.text import train_tokenizer
    coco = load_coco_captions(root / 'annotations' / 'captions_val2014.json')
    qs, _ = load_vqa(*vqa_paths(root, 'val2014'))
    return train_tokenizer([a['caption'] for a in coco['annotations']] + [q['question'] for q in qs])


def test_vqa_test_split_without_annotations_or_captions(coco_mini):
    (coco_mini / 'v2_mscoco_val2014_annotations.json').unlink()
    (coco_mini / 'annotations' / 'captions_val2014.json').unlink()   # falls back to COCO file naming
    vqa = VQADataset(coco_mini, 'val2014', transform=image_transform(32))
    assert vqa.annotations is None and 'answers' not in vqa[1]
    batch = VQACollate(_tok(FIXTURE_ROOT := Path(__file__).parent / 'fixtures' / 'coco_mini'))([vqa[0], vqa[1]])
    assert 'targets' not in batch and batch['input_ids'].shape[0] == 3


def test_shapes_datasets_and_collate(shapes):
    tok = data_tokenizer(shapes)   # the data root's tokenizer, made on first use
    assert (tok.pad_token_id, tok.mask_token, tok.bos_token, tok.eos_token, tok.unk_token) == (0, '[MASK]', '[BOS]', '[EOS]', '[UNK]')
    ids = tok('What color is the leftmost circle?')['input_ids']
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    vqa = VQADataset(shapes, 'val', transform=image_transform(64))
    vocab = AnswerVocab.from_annotations(VQADataset(shapes, 'train', transform=image_transform(64)).annotations)
    assert {'yes', 'no', '0', '1', 'red', 'circle', 'left', 'small'} <= set(vocab.itos)
    b = VQACollate(tok, vocab)([vqa[i] for i in range(3)])
    assert b['images'].shape == (3, 3, 64, 64) and b['image_index'].bincount().tolist() == [10, 10, 10]
    assert torch.all(b['targets'].sum(1) >= 1)  # every answer is in the vocabulary, with full credit
    caps = CaptionDataset(shapes, 'train', transform=image_transform(64))
    cb = CaptionCollate(tok)([caps[i] for i in range(4)])
    assert cb['input_ids'].shape[0] == 4 and (cb['input_ids'] != 0).sum() == cb['attention_mask'].sum()


def test_flip_never_applies_to_left_right_text(shapes):
    torch.manual_seed(0)
    caps = CaptionDataset(shapes, 'train', transform=image_transform(64), hflip=1.0)
    n_flipped = 0
    for i in range(0, len(caps), 3):
        it = caps[i]
        assert it['flipped'] != mentions_left_right(it['caption'])
        n_flipped += it['flipped']
    assert n_flipped > 10
    vqa = VQADataset(shapes, 'train', transform=image_transform(64), hflip=1.0)
    for i in range(len(vqa)):
        it = vqa[i]
        assert not (it['flipped'] and mentions_left_right(it['questions'] + [a for x in it['answers'] for a in x]))


def test_question_subsets_keep_answers_aligned(shapes):
    full = VQADataset(shapes, 'train', transform=image_transform(64))
    sub = VQADataset(shapes, 'train', transform=image_transform(64), max_questions=4)
    torch.manual_seed(0)
    seen = set()
    for i in range(20):
        a, b = full[i], sub[i]
        assert len(b['questions']) == 4 and b['question_ids'] == sorted(b['question_ids'])
        for q, ans, fam in zip(b['question_ids'], b['answers'], b['families']):
            j = a['question_ids'].index(q)
            assert ans == a['answers'][j] and fam == a['families'][j]
        seen.add(tuple(b['question_ids']))
    assert len(seen) == 20 and len({tuple(sub[0]['question_ids']) for _ in range(10)}) > 1   # drawn anew each time


def test_noisy_student_input_noise_keeps_colours():
    im = Image.new('RGB', (64, 64), (0, 0, 255)); im.paste((255, 0, 0), (24, 24, 40, 40))
    clean = image_transform(64)(im)
    torch.manual_seed(0)
    noisy = torch.stack([image_transform(64, train=True, noise=True)(im) for _ in range(8)])
    assert noisy.shape == (8, 3, 64, 64) and (noisy - clean).abs().mean() > 0.05
    assert (noisy[1:] - noisy[:1]).abs().amax() > 0.5                          # different each time
    assert torch.allclose(noisy.mean((0, 2, 3)), clean.mean((1, 2)), atol=0.1)   # but the same colours
    assert torch.equal(image_transform(64, train=False, noise=True)(im), clean)  # evaluation is never noisy


def test_clip_tokenizer_from_local_hf_directory(tmp_path):
    import transformers
    from transformers import CLIPTokenizerFast
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1, 'a</w>': 2, 'red</w>': 3, 'circle</w>': 4, 'r': 5, 'e': 6,
             'd</w>': 7, 're': 8}
    if int(transformers.__version__.split('.')[0]) >= 5:
        ref = CLIPTokenizerFast(vocab=vocab, merges=[('r', 'e')])
    else:
        (tmp_path / 'vocab.json').write_text(json.dumps(vocab)); (tmp_path / 'merges.txt').write_text('#version: 0.2\nr e\n')
        ref = CLIPTokenizerFast(vocab_file=str(tmp_path / 'vocab.json'), merges_file=str(tmp_path / 'merges.txt'))
    ref.save_pretrained(tmp_path / 'hf')
    tok = load_tokenizer(tmp_path / 'hf')
    assert tok.mask_token == '<|mask|>' and tok.pad_token is not None and len(tok) == len(ref) + 1
    assert tok('a red circle')['input_ids'] == ref('a red circle')['input_ids']
    assert tok.convert_tokens_to_ids('<|mask|>') == len(ref)


# ---------------------------------------------------------------- bad input

def test_generator_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match='n_val must be an integer >= 0'): make_shape_scenes(tmp_path / 'x', 1, -2, 0)
    with pytest.raises(ValueError, match='at least 1'): make_shape_scenes(tmp_path / 'x', 0, 0, 0)
    with pytest.raises(ValueError, match="unknown preset 'nope'"): make_shape_scenes(tmp_path / 'x', 1, 0, 0, preset='nope')
    with pytest.raises(ValueError, match='image_size must be an integer >= 32'): make_shape_scenes(tmp_path / 'x', 1, 0, 0, image_size=8)
    with pytest.raises(ValueError, match='n_train must be an integer'): make_shape_scenes(tmp_path / 'x', 2.5, 0, 0)
    (tmp_path / 'f').write_text('x')
    with pytest.raises(NotADirectoryError, match='not a directory'): make_shape_scenes(tmp_path / 'f', 1, 0, 0)
    (tmp_path / 'full').mkdir(); (tmp_path / 'full' / 'mine.txt').write_text('x')
    with pytest.raises(FileExistsError, match='refusing'): make_shape_scenes(tmp_path / 'full', 1, 0, 0)
    assert (tmp_path / 'full' / 'mine.txt').read_text() == 'x'


def test_corrupt_and_missing_images_are_named(coco_mini):
    img = coco_mini / 'val2014' / 'COCO_val2014_000000000073.jpg'
    img.write_bytes(img.read_bytes()[:200])            # truncated JPEG
    vqa = VQADataset(coco_mini, 'val2014', transform=image_transform(32))
    with pytest.raises(DataError, match='COCO_val2014_000000000073.jpg: cannot decode image'): vqa[1]
    img.unlink()
    with pytest.raises(FileNotFoundError, match='COCO_val2014_000000000073.jpg: image file not found'): vqa[1]


def _edit(path, fn):
    d = json.loads(path.read_text()); fn(d); path.write_text(json.dumps(d))


def test_malformed_json_and_missing_fields_are_named(coco_mini):
    q = coco_mini / 'v2_OpenEnded_mscoco_val2014_questions.json'
    a = coco_mini / 'v2_mscoco_val2014_annotations.json'
    c = coco_mini / 'annotations' / 'captions_val2014.json'
    good = {p: p.read_text() for p in (q, a, c)}
    def restore():
        for p, t in good.items(): p.write_text(t)
    q.write_text(good[q][:300])
    with pytest.raises(DataError, match='v2_OpenEnded_mscoco_val2014_questions.json: malformed JSON'): load_vqa(q, a)
    restore(); _edit(a, lambda d: d['annotations'][1].pop('answers'))
    with pytest.raises(DataError, match=r"annotations.json: annotations\[1\]: missing field 'answers'"): load_vqa(q, a)
    restore(); _edit(a, lambda d: d['annotations'][2].update(answer_type='maybe'))
    with pytest.raises(DataError, match=r"annotations\[2\]: answer_type 'maybe'"): load_vqa(q, a)
    restore(); _edit(a, lambda d: d['annotations'].pop())
    with pytest.raises(DataError, match=r'no annotation for question_id\(s\) \[73000\]'): load_vqa(q, a)
    restore(); _edit(q, lambda d: d['questions'].append(dict(d['questions'][0])))
    with pytest.raises(DataError, match='duplicate question_id 42000'): load_vqa(q, a)
    restore(); _edit(c, lambda d: d['images'][0].pop('file_name'))
    with pytest.raises(DataError, match=r"captions_val2014.json: images\[0\]: missing field 'file_name'"): load_coco_captions(c)
    restore(); _edit(c, lambda d: d['annotations'][0].update(image_id=999))
    with pytest.raises(DataError, match='refers to image_id 999'): load_coco_captions(c)
    restore(); _edit(c, lambda d: d.pop('images'))
    with pytest.raises(DataError, match="missing field 'images'"): CaptionDataset(coco_mini, 'val2014')
    restore(); c.unlink()
    with pytest.raises(FileNotFoundError, match='captions_val2014.json: no such file'): CaptionDataset(coco_mini, 'val2014')


def test_unknown_answer_and_missing_split(shapes):
    vocab = AnswerVocab(['yes', 'no'])
    with pytest.raises(KeyError, match="'maybe'"): vocab.index('maybe')
    assert vocab.soft_scores(['maybe'] * 10) == {}
    with pytest.raises(FileNotFoundError, match='v2_OpenEnded_\\*_nosuch_questions.json'): vqa_paths(shapes, 'nosuch')
