"""The `mmkt` console script and `python -m mmkt_lib.cli`, run as a user runs them (subprocesses)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

BIN = Path(sys.executable).parent


def run(*args, cwd=None):
    env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_mmkt_data_shapes_prints_statistics(tmp_path):
    r = run('mmkt', 'data', 'shapes', '--out', str(tmp_path / 's'), '--n-train', '30', '--n-val', '10', '--n-test', '0')
    assert r.returncode == 0, r.stderr
    assert 'train: 30 images, 150 captions, 300 questions' in r.stdout and 'existence' in r.stdout
    assert (tmp_path / 's' / 'tokenizer.json').is_file() and not (tmp_path / 's' / 'test').exists()


def test_make_shapes_script_and_module_entry_point(tmp_path):
    script = Path(__file__).parent.parent / 'data_scripts' / 'make_shapes.py'
    r = run(sys.executable, str(script), '--out', str(tmp_path / 'soc'), '--preset', 'sort_of_clevr',
            '--n-train', '10', '--n-val', '0', '--n-test', '0')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'soc' / 'shapescenes.json').read_text())['config']['image_size'] == 75
    r = run(sys.executable, '-m', 'mmkt_lib.cli', '--help')
    assert r.returncode == 0 and 'demo' in r.stdout


def test_bad_arguments_give_a_clear_error(tmp_path):
    r = run('mmkt', 'data', 'shapes', '--out', str(tmp_path / 's'), '--n-train', '-5')
    assert r.returncode == 1 and 'mmkt: error: n_train must be an integer >= 0' in r.stderr
    r = run('mmkt', 'data', 'shapes', '--preset', 'nope')
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr


def test_demo_tiny_writes_results_and_predict_works(tmp_path):
    "`mmkt demo --preset tiny` end to end: every results.json key, figures; then `mmkt predict` and `mmkt vlkd` on it."
    r = run('mmkt', 'demo', '--preset', 'tiny', '--out', str(tmp_path / 'run'), '--data', str(tmp_path / 'data'), '--device', 'cpu',
            'n_train=200', 'n_val=50', 'n_test=50', 'eval_every=20',
            'steps={contrastive: 20, pretrain: 20, vqa: 40, caption: 40}')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())
    flat = {}
    def walk(d, p=''):
        for k, v in d.items():
            if isinstance(v, dict) and k != 'config': walk(v, f'{p}{k}.')
            else: flat[f'{p}{k}'] = v
    walk(res)
    keys = ['vqa.overall', 'caption.Bleu_4', 'caption.METEOR', 'caption.ROUGE_L', 'caption.CIDEr', 'retrieval.i2t_R@1',
            'retrieval.t2i_R@1', 'baseline.prior_vqa', 'config', 'device.type']
    keys += [f'vqa.per_family.{f}' for f in ('existence', 'counting', 'attribute', 'spatial', 'comparison')]
    keys += [f'vqa.per_answer_type.{t}' for t in ('yes/no', 'number', 'other')]
    keys += [f'seconds.{s}' for s in ('data', 'contrastive', 'pretrain', 'vqa', 'caption', 'eval', 'pseudo')]
    keys += [f'pseudo.{k}' for k in ('label_fraction', 'teacher_vqa', 'student_vqa', 'supervised_vqa', 'precision')]
    keys += [f'caption.{k}' for k in ('CHAIR_i', 'CHAIR_s', 'count_accuracy', 'relation_accuracy')]
    assert [k for k in keys if k not in flat] == []
    assert 0 <= flat['vqa.overall'] <= 100 and 0 < flat['baseline.prior_vqa'] < 50
    for f in ('loss_curves.png', 'vqa_examples.png', 'captions.png', 'metrics.jsonl', 'pseudo/pseudo.png'):
        assert (tmp_path / 'run' / f).is_file(), f
    assert flat['pseudo.label_fraction'] == 0.25 and flat['pseudo.supervised_vqa'] == flat['vqa.overall']
    rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert any('val_vqa' in r for r in rows) and any('val_CIDEr' in r for r in rows)   # periodic evaluation (eval_every)
    assert 'VQA accuracy' in r.stdout
    image = sorted((tmp_path / 'data' / 'test').glob('*.png'))[0]
    p = run('mmkt', 'predict', '--run', str(tmp_path / 'run'), '--image', str(image), '--question', 'How many circles are there?')
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert lines[0] == 'Q: How many circles are there?' and lines[1].startswith('A: ') and lines[-1].startswith('caption: ')
    bad = run('mmkt', 'predict', '--run', str(tmp_path / 'nope'), '--image', str(image))
    assert bad.returncode == 1 and 'not a run directory' in bad.stderr
    # the run as the frozen CLIP teacher of chapter 18c's language model
    v = run('mmkt', 'vlkd', '--teacher', str(tmp_path / 'run'), '--out', str(tmp_path / 'vlkd'), '--text-steps', '6',
            '--align-steps', '4', '--n-test', '5')
    assert v.returncode == 0, v.stderr[-3000:]
    assert 'zero-shot VQA' in v.stdout and (tmp_path / 'vlkd' / 'vlkd.safetensors').is_file()
    vr = json.loads((tmp_path / 'vlkd' / 'results.json').read_text())
    assert vr['config']['align_steps'] == 4 and len(vr['zero_shot_vqa']['image']['per_question']) == 50


def test_download_scripts_fail_clearly_offline(tmp_path):
    root = Path(__file__).parent.parent / 'data_scripts'
    for script, var in (('download_coco.sh', 'MMKT_COCO_BASE'), ('download_vqa.sh', 'MMKT_VQA_BASE')):
        env = {**os.environ, var: 'http://127.0.0.1:9'}  # nothing listens on the discard port
        r = subprocess.run(['bash', str(root / script), str(tmp_path / 'coco')], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 3 and 'Are you offline?' in r.stderr, (script, r.stderr)


def test_train_eval_scores_the_stages_the_run_trained(tmp_path):
    "`mmkt train ... stages=[vqa] --eval`: VQA scored, captions and retrieval named as skipped; eval and predict too."
    data = tmp_path / 'data'
    assert run('mmkt', 'data', 'shapes', '--out', str(data), '--n-train', '40', '--n-val', '10',
               '--n-test', '10').returncode == 0
    out = tmp_path / 'run'
    r = run('mmkt', 'train', '--config', 'shapes_tiny', '--eval', 'stages=[vqa]', 'steps.vqa=3', 'pseudo_label=0',
            'batch_size=8', f'data={data}', f'out={out}', 'device=cpu', 'eval_every=0')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / 'results.json').read_text())
    assert 'vqa' in res and 'caption' not in res and 'retrieval' not in res
    assert res['skipped'] == {'caption': 'not trained in this run',
                              'retrieval': 'no contrastive or fusion pre-training in this run'}
    assert 'not scored: caption (not trained in this run)' in r.stdout
    r = run('mmkt', 'eval', '--run', str(out))
    assert r.returncode == 0 and 'VQA accuracy' in r.stdout and 'not scored: caption' in r.stdout, r.stderr[-2000:]
    image = next((data / 'test').iterdir())
    r = run('mmkt', 'predict', '--run', str(out), '--image', str(image), '--question', 'How many objects are there?')
    assert r.returncode == 0 and 'A: ' in r.stdout and 'no caption: the caption stage was not trained' in r.stdout
    (out / 'vqa.safetensors').unlink()
    r = run('mmkt', 'eval', '--run', str(out))
    assert r.returncode == 1 and 'no trained stage in this run' in r.stderr


def test_own_images_walkthrough(tmp_path):
    "README's 'Train on your own images': the toy folder, make_root.py, check, tokenizer, a short training run."
    script = Path(__file__).parent.parent / 'data_scripts' / 'make_root.py'
    r = run(sys.executable, str(script), '--example', str(tmp_path / 'toy'))
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / 'toy' / 'items.jsonl').read_text().splitlines()
    assert len(lines) == 240 and json.loads(lines[0])['questions'][0]['question'] == 'how many things are there?'
    r = run(sys.executable, str(script), '--items', str(tmp_path / 'toy' / 'items.jsonl'), '--images',
            str(tmp_path / 'toy' / 'images'), '--out', str(tmp_path / 'root'))
    assert r.returncode == 0 and 'train: 192 images, 384 captions, 576 questions' in r.stdout, r.stderr
    anns = json.loads((tmp_path / 'root' / 'v2_own_val_annotations.json').read_text())['annotations']
    assert all(len(a['answers']) == 10 for a in anns) and {a['answer_type'] for a in anns} == {'yes/no', 'number', 'other'}
    r = run('mmkt', 'data', 'check', str(tmp_path / 'root'))
    assert r.returncode == 0 and '0 error(s), 0 warning(s)' in r.stdout, r.stdout
    r = run('mmkt', 'data', 'tokenizer', '--data', str(tmp_path / 'root'))
    assert r.returncode == 0 and 'trained on the train captions and questions' in r.stdout
    r = run('mmkt', 'train', '--config', 'shapes_tiny', 'source=files', f"data={tmp_path / 'root'}",
            f"out={tmp_path / 'run'}", 'pseudo_label=0', 'steps={contrastive: 2, pretrain: 2, vqa: 4, caption: 4}', '--eval')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert res['vqa']['rules'] == 'master' and 'CIDEr' in res['caption']


def test_make_root_names_bad_items(tmp_path):
    script = Path(__file__).parent.parent / 'data_scripts' / 'make_root.py'
    (tmp_path / 'images').mkdir()
    (tmp_path / 'items.jsonl').write_text('{"image": "a.jpg", "captions": ["x"]}\n{"image": \n')
    r = run(sys.executable, str(script), '--items', str(tmp_path / 'items.jsonl'), '--images', str(tmp_path / 'images'),
            '--out', str(tmp_path / 'root'))
    assert r.returncode == 1 and f"{tmp_path / 'images' / 'a.jpg'}: no such image" in r.stderr
    Image.new('RGB', (8, 8)).save(tmp_path / 'images' / 'a.jpg')
    r = run(sys.executable, str(script), '--items', str(tmp_path / 'items.jsonl'), '--images', str(tmp_path / 'images'),
            '--out', str(tmp_path / 'root'))
    assert r.returncode == 1 and 'items.jsonl:2: malformed JSON' in r.stderr
