"""The `mmkt` console script and `python -m mmkt_lib.cli`, run as a user runs them (subprocesses)."""
import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_demo_tiny_writes_results(tmp_path):
    r = run('mmkt', 'demo', '--preset', 'tiny', '--out', str(tmp_path / 'run'), '--data', str(tmp_path / 'data'))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert 0 < res['baseline']['prior_vqa'] < 50
    assert set(res['baseline']['prior_vqa_per_family']) == {'existence', 'counting', 'attribute', 'spatial', 'comparison'}
    assert res['seconds']['data'] > 0 and res['device']['type'] in ('cpu', 'cuda', 'mps')
    assert 'question-only prior on test' in r.stdout


def test_download_scripts_fail_clearly_offline(tmp_path):
    root = Path(__file__).parent.parent / 'data_scripts'
    for script, var in (('download_coco.sh', 'MMKT_COCO_BASE'), ('download_vqa.sh', 'MMKT_VQA_BASE')):
        env = {**os.environ, var: 'http://127.0.0.1:9'}  # nothing listens on the discard port
        r = subprocess.run(['bash', str(root / script), str(tmp_path / 'coco')], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 3 and 'Are you offline?' in r.stderr, (script, r.stderr)
