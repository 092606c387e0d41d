#!/usr/bin/env python3
"""Turn a folder of your own images and a JSON-lines file of their captions and questions into an mmkt data root
(COCO captions + VQA v2 files, split into train / val / test by image).

    python data_scripts/make_root.py --example /tmp/toy            # a toy folder to try it on: images/ + items.jsonl
    python data_scripts/make_root.py --items /tmp/toy/items.jsonl --images /tmp/toy/images --out data/toy

One line of `items.jsonl` per image:

    {"image": "beach.jpg", "captions": ["two dogs run on a beach"],
     "questions": [{"question": "how many dogs are there?", "answer": "2"}]}

`answers` (a list of up to ten annotators' answers) may replace `answer`. VQA accuracy compares each annotator's
answer with the other nine, so a question needs ten answers: a single answer is written ten times, and a shorter list
is padded by repeating it. The answer type is `yes/no` for yes / no, `number` for digits, `other` otherwise; the
question type is the question's first two words. Images are referred to, not copied, unless --copy is given.
"""
import argparse
import json
import random
import shutil
import sys
from pathlib import Path

COLOURS = {'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220), 'yellow': (230, 200, 30)}


def _fail(msg: str):
    print(f"make_root.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_items(path: Path, images: Path) -> list[dict]:
    "The records of `path`, each checked: an existing image, a list of captions, questions with answers."
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(f"{path}:{n}: malformed JSON ({e.msg})")
        if not isinstance(it, dict) or not isinstance(it.get('image'), str):
            _fail(f"{path}:{n}: expected an object with an 'image' file name")
        if it['image'] in seen:
            _fail(f"{path}:{n}: image {it['image']!r} listed twice")
        if not (images / it['image']).is_file():
            _fail(f"{path}:{n}: {images / it['image']}: no such image")
        for q in it.get('questions', []):
            if not isinstance(q, dict) or not q.get('question') or not (q.get('answer') or q.get('answers')):
                _fail(f"{path}:{n}: each question needs 'question' and 'answer' (or 'answers')")
        seen.add(it['image'])
        items.append(it)
    if not items:
        _fail(f"{path}: no items")
    return items


def _answer_type(answer: str) -> str:
    a = answer.strip().lower()
    return 'yes/no' if a in ('yes', 'no') else 'number' if a.isdigit() else 'other'


def _ten(q: dict) -> list[str]:
    "Ten annotators' answers: the given ones, repeated in turn up to ten."
    given = list(q.get('answers') or [q['answer']])[:10]
    return [str(given[k % len(given)]) for k in range(10)]


def split_files(items: list[dict], split: str, images: Path, out: Path, copy: bool, first_id: int) -> tuple:
    "The COCO captions, VQA questions and annotations documents of one split (and its images, linked or copied)."
    (out / split).mkdir(parents=True, exist_ok=True)
    imgs, caps, qs, anns = [], [], [], []
    for k, it in enumerate(items):
        iid = first_id + k
        src, dst = (images / it['image']).resolve(), out / split / Path(it['image']).name
        if not dst.exists():
            shutil.copyfile(src, dst) if copy else dst.symlink_to(src)
        imgs.append({'id': iid, 'file_name': dst.name})
        caps += [{'id': 10 * iid + j, 'image_id': iid, 'caption': c} for j, c in enumerate(it.get('captions', []))]
        for j, q in enumerate(it.get('questions', [])):
            qid, ten = 100 * iid + j, _ten(q)
            qs.append({'question_id': qid, 'image_id': iid, 'question': q['question']})
            anns.append({'question_id': qid, 'image_id': iid, 'question_type': ' '.join(q['question'].lower().split()[:2]),
                         'answer_type': _answer_type(ten[0]), 'multiple_choice_answer': ten[0],
                         'answers': [{'answer': a, 'answer_confidence': 'yes', 'answer_id': i + 1}
                                     for i, a in enumerate(ten)]})
    return {'images': imgs, 'annotations': caps}, {'questions': qs}, {'annotations': anns}


def make_root(items: list[dict], images: Path, out: Path, val: float, test: float, seed: int, copy: bool, name: str):
    "Split `items` by image and write the data root `out`."
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(val * len(items)), round(test * len(items))
    parts = {'test': order[:n_test], 'val': order[n_test:n_test + n_val], 'train': order[n_test + n_val:]}
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    first = 1
    for split, idx in parts.items():
        if not idx:
            continue
        caps, qs, anns = split_files([items[i] for i in sorted(idx)], split, images, out, copy, first)
        first += len(idx)
        (out / 'annotations' / f'captions_{split}.json').write_text(json.dumps(caps))
        (out / f'v2_OpenEnded_{name}_{split}_questions.json').write_text(json.dumps(qs))
        (out / f'v2_{name}_{split}_annotations.json').write_text(json.dumps(anns))
        print(f"{split}: {len(idx)} images, {len(caps['annotations'])} captions, {len(qs['questions'])} questions")


def make_example(out: Path, n: int = 240, seed: int = 0):
    "A toy folder of your own data: `n` JPEG photos of coloured discs and boxes on a grey ground, and items.jsonl."
    from PIL import Image, ImageDraw
    rng = random.Random(seed)
    (out / 'images').mkdir(parents=True, exist_ok=True)
    with open(out / 'items.jsonl', 'w') as f:
        for i in range(n):
            w, h = rng.choice([(96, 72), (80, 80), (120, 90)])
            im = Image.new('RGB', (w, h), tuple(rng.randint(90, 160) for _ in range(3)))
            d = ImageDraw.Draw(im)
            objs = [(rng.choice(sorted(COLOURS)), rng.choice(['disc', 'box'])) for _ in range(rng.randint(1, 3))]
            for k, (c, shape) in enumerate(objs):
                x, y, r = int(w * (k + 0.5) / len(objs)), rng.randint(h // 3, 2 * h // 3), min(w, h) // 7
                (d.ellipse if shape == 'disc' else d.rectangle)([x - r, y - r, x + r, y + r], fill=COLOURS[c])
            im.save(out / 'images' / f'photo_{i:04d}.jpg', quality=90)
            names = ' and '.join(f'a {c} {s}' for c, s in objs)
            c0, s0 = objs[0]
            rec = {'image': f'photo_{i:04d}.jpg', 'captions': [f'{names} on a grey ground', f'a photo of {names}'],
                   'questions': [{'question': 'how many things are there?', 'answer': str(len(objs))},
                                 {'question': f'what colour is the leftmost {s0}?', 'answer': c0},
                                 {'question': 'is there a red disc?', 'answer': 'yes' if ('red', 'disc') in objs else 'no'}]}
            f.write(json.dumps(rec) + '\n')
    print(f"{out}: {n} images in images/ and their captions and questions in items.jsonl")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--example', type=Path, help='write a toy folder (images/ + items.jsonl) here and stop')
    ap.add_argument('--items', type=Path, help='the JSON-lines file, one image per line')
    ap.add_argument('--images', type=Path, help='the folder the "image" names are relative to')
    ap.add_argument('--out', type=Path, help='the data root to write')
    ap.add_argument('--val', type=float, default=0.1, help='share of the images for validation')
    ap.add_argument('--test', type=float, default=0.1, help='share of the images for testing')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--name', default='own', help='the {name} of the VQA file names')
    ap.add_argument('--copy', action='store_true', help='copy the images instead of linking to them')
    a = ap.parse_args()
    if a.example:
        return make_example(a.example)
    if not (a.items and a.images and a.out):
        ap.error('give --items, --images and --out (or --example DIR)')
    if not 0 <= a.val + a.test < 1:
        ap.error('--val + --test must be in [0, 1)')
    make_root(read_items(a.items, a.images), a.images, a.out, a.val, a.test, a.seed, a.copy, a.name)


if __name__ == '__main__':
    main()
