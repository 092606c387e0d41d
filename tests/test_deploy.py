"ONNX export (chapter 19): `mmkt export` on a small trained run, checked with ONNX Runtime; skipped without the extra."
import json

import pytest
from _mmkt import mmkt

from mmkt_lib.deploy import export_requirements

pytestmark = pytest.mark.skipif(export_requirements() is not None, reason=str(export_requirements()))


def test_mmkt_export_writes_graphs_that_agree_with_pytorch(tmp_path):
    r = mmkt('train', '--config', 'shapes_tiny', 'stages=[contrastive,vqa]', 'steps.contrastive=4', 'steps.vqa=4',
             'batch_size=8', 'n_train=40', 'n_val=8', 'n_test=8', 'pseudo_label=0', f'out={tmp_path / "run"}',
             f'data={tmp_path / "data"}', 'device=cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    x = mmkt('export', '--run', str(tmp_path / 'run'), '--out', str(tmp_path / 'onnx'))
    assert x.returncode == 0, x.stderr[-3000:]
    rec = json.loads((tmp_path / 'onnx' / 'export.json').read_text())
    assert set(rec['files']) == {'image_encoder', 'text_encoder', 'vqa'}
    assert rec['vqa']['questions'] == 80 and rec['vqa']['same_answer'] == 1.0 and rec['vqa']['max_abs_diff'] < 1e-3
    assert len(rec['vqa']['question_lengths']) > 1 and rec['encoders']['images'] == 8
    assert (tmp_path / 'onnx' / 'tokenizer.json').is_file() and (tmp_path / 'onnx' / 'answer_vocab.json').is_file()
    assert 'same answer 100.00%' in x.stdout


def test_mmkt_export_names_a_directory_that_is_not_a_run(tmp_path):
    x = mmkt('export', '--run', str(tmp_path / 'nope'), '--out', str(tmp_path / 'onnx'))
    assert x.returncode == 1 and 'not a run directory' in x.stderr
