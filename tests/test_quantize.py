"Quantization (chapter 19b): `mmkt quantize` on a small trained run, saved, loaded and scored; skipped without torchao."
import json

import pytest
import torch
from _mmkt import mmkt

from mmkt_lib.quantize import load_quantized, quantize_requirements

pytestmark = pytest.mark.skipif(quantize_requirements() is not None, reason=str(quantize_requirements()))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp('q')
    r = mmkt('train', '--config', 'shapes_tiny', 'stages=[contrastive,vqa,caption]', 'steps.contrastive=4',
             'steps.vqa=4', 'steps.caption=4', 'batch_size=8', 'n_train=40', 'n_val=8', 'n_test=8', 'pseudo_label=0',
             f'out={d / "run"}', f'data={d / "data"}', 'device=cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    return d / 'run'


def test_mmkt_quantize_saves_a_run_that_loads_and_matches(run, tmp_path):
    x = mmkt('quantize', '--run', str(run), '--out', str(tmp_path / 'q'), '--parts', 'vision,text',
             '--mode', 'int8-dynamic')
    assert x.returncode == 0, x.stderr[-3000:]
    rec = json.loads((tmp_path / 'q' / 'scores.json').read_text())
    assert rec['parts'] == ['vision', 'text'] and rec['mode'] == 'int8-dynamic'
    assert rec['file_bytes'] < rec['float']['bytes'] and 0.9 < rec['image_cos'] < 1.0 and 0.9 < rec['text_cos'] < 1.0
    assert rec['float']['image_cos'] == pytest.approx(1.0, abs=1e-5)
    assert 0 <= rec['same_answer'] <= 100 and 0 <= rec['same_caption'] <= 100 and rec['i2t_R@1'] is not None
    assert set(rec['latency']) >= {'image_embed_ms', 'vqa_ms', 'caption_ms'}
    pipe = load_quantized(tmp_path / 'q')
    w = pipe.vqa.clip.visual.blocks[0].mlp.fc1.weight
    assert type(w).__name__ == 'Int8Tensor'                                  # the int8 weights came back
    assert type(pipe.vqa.fusion.layers[0].t_mlp.fc1.weight) is torch.nn.Parameter   # fusion was not quantized
    assert (tmp_path / 'q' / 'vqa_test_results.json').is_file() and 'MB' in x.stdout


def test_mmkt_quantize_rejects_an_unknown_component(run, tmp_path):
    x = mmkt('quantize', '--run', str(run), '--out', str(tmp_path / 'q'), '--parts', 'vision,audio')
    assert x.returncode == 1 and "unknown component(s) ['audio']" in x.stderr
    assert not (tmp_path / 'q' / 'quantized.pt').exists()


def test_mmkt_quantize_names_a_directory_that_is_not_a_run(tmp_path):
    x = mmkt('quantize', '--run', str(tmp_path / 'nope'), '--out', str(tmp_path / 'q'))
    assert x.returncode == 1 and 'not a run directory' in x.stderr


def test_load_quantized_names_a_missing_record(tmp_path):
    with pytest.raises(FileNotFoundError, match='quantize.json'):
        load_quantized(tmp_path)


def test_load_quantized_names_a_damaged_file(run, tmp_path):
    from mmkt_lib.pipeline import load_run
    from mmkt_lib.quantize import quantize_pipeline, save_quantized
    save_quantized(quantize_pipeline(load_run(run), ['text']), tmp_path / 'q', run, ['text'], 'int8-weight')
    assert type(load_quantized(tmp_path / 'q').pre.clip.text.blocks[0].mlp.fc1.weight).__name__ == 'Int8Tensor'
    (tmp_path / 'q' / 'quantized.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='quantized.pt: not a readable quantized state'):
        load_quantized(tmp_path / 'q')
