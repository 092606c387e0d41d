"""Bad input, case by case: each is found early and reported in one line naming the file, item or field, or handled
the way a user would expect. The `mmkt` cases run the console entry point in-process (`main`), which prints
`mmkt: error: ...` and returns 1 instead of a traceback."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmkt_lib.checkpoint import resumable_checkpoint, save_checkpoint
from mmkt_lib import trainer
from mmkt_lib.cli import main
from mmkt_lib.config import load_config
from mmkt_lib.core import DataError, load_json
from mmkt_lib.data import VQACollate, image_transform, load_coco_captions, load_vqa, read_image, vqa_paths
from mmkt_lib.datacheck import check_data
from mmkt_lib.metrics import caption_metrics, vqa_accuracy
from mmkt_lib.text import data_tokenizer
from mmkt_lib.trainer import cosine_schedule
from mmkt_lib.vqa import AnswerVocab


def cli_error(capsys, *argv) -> str:
    "Run `mmkt ARGV`: it must fail with exit status 1 and exactly one line on stderr, which is returned."
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 1, (rc, err)
    assert err.startswith('mmkt: error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


@pytest.fixture
def root(shapes, tmp_path):
    "A private copy of the session's small ShapeScenes root, to damage."
    r = tmp_path / 'root'
    shutil.copytree(shapes, r)
    return r


def _kinds(rep) -> set:
    return {(p.severity, p.split, p.kind) for p in rep.problems}


def _first_image(root, split='train') -> Path:
    return sorted((root / split).iterdir())[0]


def _edit_json(path: Path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


# ---------------------------------------------------------------- images

def test_corrupt_image(root):
    f = _first_image(root)
    f.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=rf'{f.name}: cannot decode image'):
        read_image(f)
    assert ('error', 'train', 'undecodable image') in _kinds(check_data(root, ['train']))


def test_missing_image(root):
    f = _first_image(root)
    f.unlink()
    with pytest.raises(FileNotFoundError, match=rf'{f.name}: image file not found'):
        read_image(f)
    rep = check_data(root, ['train'], decode=False)
    assert [str(p) for p in rep.errors] == [f"{f} (image_id 1)"]


def test_truncated_png_found_by_decoding_only(root):
    f = _first_image(root)
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(DataError, match=rf'{f.name}: cannot decode image \(image file is truncated'):
        read_image(f)
    assert ('error', 'train', 'undecodable image') in _kinds(check_data(root, ['train']))
    assert check_data(root, ['train'], decode=False).ok     # the header is intact: the fast check cannot see it


def test_truncated_jpeg(tmp_path):
    f = tmp_path / 'cut.jpg'
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, 'JPEG')
    f.write_bytes(buf.getvalue()[:600])
    with pytest.raises(DataError, match='cut.jpg: cannot decode image'):
        read_image(f)


def test_grayscale_image_is_read_as_grey_rgb(root):
    f = _first_image(root)
    grey = Image.open(f).convert('L')
    grey.save(f)
    rgb = np.asarray(read_image(f))
    assert rgb.shape[-1] == 3 and (rgb[..., 0] == np.asarray(grey)).all() and (rgb[..., 1] == rgb[..., 2]).all()
    rep = check_data(root, ['train'], decode=False)
    assert rep.ok and [p.detail for p in rep.warnings] == ['mode L, read as RGB']


def test_rgba_image_is_composited_over_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[:4] = (200, 10, 10, 255)                         # opaque red top half, fully transparent (black) bottom half
    Image.fromarray(a, 'RGBA').save(tmp_path / 'x.png')
    rgb = np.asarray(read_image(tmp_path / 'x.png'))
    assert rgb[0, 0].tolist() == [200, 10, 10] and rgb[-1, -1].tolist() == [255, 255, 255]


def test_palette_image_with_transparency(tmp_path):
    im = Image.new('P', (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.info['transparency'] = 0
    im.putpixel((0, 0), 0)
    im.save(tmp_path / 'p.png', transparency=0)
    rgb = np.asarray(read_image(tmp_path / 'p.png'))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [10, 200, 30]


def test_16_bit_image_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)      # 0 .. 65,472
    Image.fromarray(ramp).save(tmp_path / 'r.png')
    rgb = np.asarray(read_image(tmp_path / 'r.png'))[..., 0].astype(int)
    assert Image.open(tmp_path / 'r.png').mode == 'I;16'
    assert np.abs(rgb - np.rint(ramp / 257)).max() <= 1 and (rgb == 255).mean() < 0.01


def test_cmyk_jpeg(tmp_path):
    Image.new('CMYK', (16, 16), (0, 255, 255, 0)).save(tmp_path / 'c.jpg')
    r, g, b = np.asarray(read_image(tmp_path / 'c.jpg'))[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60


def test_very_large_image_is_read_resized_and_flagged(tmp_path):
    Image.new('RGB', (8000, 6000), (30, 60, 90)).save(tmp_path / 'big.jpg', quality=50)
    x = image_transform(64)(read_image(tmp_path / 'big.jpg'))
    assert x.shape == (3, 64, 64)
    rep = _one_image_root(tmp_path, 'big.jpg')
    assert rep.ok and [p.detail for p in rep.warnings] == ['8000x6000']


def test_decompression_bomb_is_an_error_naming_the_file(tmp_path, monkeypatch):
    Image.new('RGB', (100, 100)).save(tmp_path / 'bomb.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    with pytest.raises(DataError, match='bomb.png: cannot decode image'):
        read_image(tmp_path / 'bomb.png')
    assert ('error', 'train', 'undecodable image') in _kinds(_one_image_root(tmp_path, 'bomb.png'))


def _one_image_root(tmp_path, name):
    "A data root whose train split is the one image `tmp_path/name`, checked."
    r = tmp_path / 'one'
    (r / 'annotations').mkdir(parents=True)
    (r / 'train').mkdir()
    shutil.copyfile(tmp_path / name, r / 'train' / name)
    (r / 'annotations' / 'captions_train.json').write_text(json.dumps(
        {'images': [{'id': 1, 'file_name': name}], 'annotations': [{'image_id': 1, 'id': 1, 'caption': 'a picture'}]}))
    (r / 'v2_OpenEnded_own_train_questions.json').write_text(json.dumps({'questions': []}))
    (r / 'v2_own_train_annotations.json').write_text(json.dumps({'annotations': []}))
    return check_data(r, ['train'])


# ---------------------------------------------------------------- JSON files

def test_truncated_json(root):
    f = root / 'annotations' / 'captions_train.json'
    f.write_text(f.read_text()[:500])
    with pytest.raises(DataError, match=r'captions_train.json: malformed JSON \(.* at line 1, column'):
        load_coco_captions(f)
    rep = check_data(root, ['train'])
    assert [(p.kind, Path(p.where).name) for p in rep.errors][:1] == [('unreadable file', 'captions_train.json')]


def test_non_utf8_json(root):
    f = root / 'v2_OpenEnded_shapes_val_questions.json'
    f.write_bytes(f.read_bytes().replace(b'"Is there', '"Está there'.encode('latin-1'), 1))
    with pytest.raises(DataError, match=r'val_questions.json: not UTF-8 text'):
        load_json(f)
    assert ('error', 'val', 'unreadable file') in _kinds(check_data(root, ['val']))


def test_missing_field(root):
    _edit_json(root / 'v2_OpenEnded_shapes_train_questions.json', lambda d: d['questions'][3].pop('question'))
    with pytest.raises(DataError, match=r"questions\[3\]: missing field 'question'"):
        load_vqa(vqa_paths(root, 'train')[0])
    rep = check_data(root, ['train'], decode=False)
    assert [str(p) for p in rep.errors if p.kind == 'missing field'] == [
        f"{root / 'v2_OpenEnded_shapes_train_questions.json'} (questions[3]): no 'question'"]


def test_orphan_caption(root):
    _edit_json(root / 'annotations' / 'captions_train.json',
               lambda d: d['annotations'].append({'image_id': 99999, 'id': 1, 'caption': 'a red circle'}))
    with pytest.raises(DataError, match='refers to image_id 99999'):
        load_coco_captions(root / 'annotations' / 'captions_train.json')
    assert ('error', 'train', 'orphan caption') in _kinds(check_data(root, ['train'], decode=False))


def test_duplicate_question_id(root):
    _edit_json(root / 'v2_OpenEnded_shapes_train_questions.json', lambda d: d['questions'].append(d['questions'][0]))
    with pytest.raises(DataError, match='duplicate question_id'):
        load_vqa(*vqa_paths(root, 'train'))
    assert ('error', 'train', 'duplicate question_id') in _kinds(check_data(root, ['train'], decode=False))


def test_orphan_annotation_and_unanswered_question(root):
    def fn(d):
        d['annotations'][0]['question_id'] = 424242
    _edit_json(root / 'v2_shapes_train_annotations.json', fn)
    kinds = _kinds(check_data(root, ['train'], decode=False))
    assert {('error', 'train', 'orphan annotation'), ('error', 'train', 'question without answers')} <= kinds


def test_empty_caption_stops_training_before_the_first_step(root, tmp_path, capsys):
    _edit_json(root / 'annotations' / 'captions_train.json', lambda d: d['annotations'][7].update(caption=' '))
    err = cli_error(capsys, 'train', '--config', 'shapes_tiny', 'source=files', f'data={root}', f'out={tmp_path / "run"}',
                    'pseudo_label=0', 'stages=[vqa]', 'steps.vqa=2')
    assert "train empty caption" in err and 'annotations[7]' in err
    assert not (tmp_path / 'run' / 'checkpoints').exists() and not (tmp_path / 'run' / 'config.yaml').exists()


def test_question_without_ten_answers(root):
    _edit_json(root / 'v2_shapes_train_annotations.json', lambda d: d['annotations'][0].update(answers=[{'answer': 'yes'}]))
    rep = check_data(root, ['train'], decode=False)
    assert [p.kind for p in rep.errors] == ['not 10 answers'] and 'one answer always scores 0' in rep.errors[0].detail


def test_over_long_question_is_flagged_and_truncated(root):
    long_q = 'is there a ' + 'very ' * 200 + 'red circle?'
    _edit_json(root / 'v2_OpenEnded_shapes_train_questions.json', lambda d: d['questions'][0].update(question=long_q))
    rep = check_data(root, ['train'], decode=False, max_words=46)
    assert rep.ok and [p.kind for p in rep.warnings] == ['over-long question']
    tok = data_tokenizer(root, verbose=False)
    b = VQACollate(tok, max_length=48)([{'image': torch.zeros(3, 8, 8), 'image_id': 1, 'questions': [long_q],
                                         'question_ids': [1]}])
    assert b['input_ids'].shape[1] == 48


def test_non_ascii_question_is_tokenised(root):
    tok = data_tokenizer(root, verbose=False)
    q = '¿Qué color tiene el círculo? 日本 🙂'
    enc = tok([q], padding=True, return_tensors='pt')
    assert enc['input_ids'].shape[1] >= 3 and (enc['attention_mask'] == 1).all()
    _edit_json(root / 'v2_OpenEnded_shapes_train_questions.json', lambda d: d['questions'][0].update(question=q))
    assert check_data(root, ['train'], decode=False).ok


def test_unknown_answer_names_it():
    vocab = AnswerVocab(['yes', 'no', '2'])
    with pytest.raises(KeyError, match=r"answer 'Purple\.' \(normalised 'purple'\) is not in the answer vocabulary"):
        vocab.index('Purple.')


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize('override, message', [
    ('steps.vqa=abc', "steps.vqa must be a whole number >= 0, got 'abc'"),
    ('steps.caption=-1', 'steps.caption must be a whole number >= 0, got -1'),
    ('steps.vqa=2.5', 'steps.vqa must be a whole number >= 0, got 2.5'),
    ('lr=nan', 'lr must be a finite number >= 0, got nan'),
    ('lr=-0.001', 'lr must be a finite number >= 0, got -0.001'),
    ('lr=0', 'lr must be > 0'),
    ('lr=abc', "lr expects float, got 'abc'"),
    ('batch_size=0', 'batch_size and grad_accum must be >= 1'),
    ('batch_size=-4', 'batch_size and grad_accum must be >= 1'),
    ('batch_size=abc', "batch_size expects int, got 'abc'"),
    ('batch_size=nan', "batch_size expects int, got 'nan'"),
    ('n_train=1.5', "n_train expects int, got '1.5'"),
    ('warmup=2', 'warmup is a fraction of the steps'),
    ('image_size=0', 'image_size must be a positive multiple of patch_size'),
    ('colour=red', "unknown config field 'colour'"),
    ('stages=[vqa', 'stages=[vqa: malformed YAML'),
])
def test_bad_config_values_are_one_line_errors(capsys, tmp_path, override, message):
    assert message in cli_error(capsys, 'train', '--config', 'shapes_tiny', f'out={tmp_path}', override)
    assert not any(tmp_path.iterdir())                       # found before anything is written


def test_malformed_yaml_file(capsys, tmp_path):
    (tmp_path / 'bad.yaml').write_text('name: x\nlr: [1,\n')
    err = cli_error(capsys, 'train', '--config', tmp_path / 'bad.yaml')
    assert 'bad.yaml: malformed YAML (' in err and 'at line 3, column 1' in err


def test_unknown_key_in_a_config_file(capsys, tmp_path):
    (tmp_path / 'c.yaml').write_text('name: x\nlearning_rate: 0.1\n')
    assert "c.yaml: unknown config field(s) ['learning_rate']" in cli_error(capsys, 'train', '--config', tmp_path / 'c.yaml')


def test_missing_config_file(capsys, tmp_path):
    assert 'nope.yaml: no such config file' in cli_error(capsys, 'train', '--config', tmp_path / 'nope.yaml')


# ---------------------------------------------------------------- runs and checkpoints

def _toy_checkpoints(d: Path, steps=(2, 4)):
    m = nn.Linear(2, 1)
    opt = torch.optim.AdamW(m.parameters())
    sch = cosine_schedule(opt, 10)
    for s in steps:
        save_checkpoint(d, m, opt, sch, {'stage': 't', 'step': s, 'epoch': 0, 'batch': s})


def test_damaged_newest_checkpoint_resumes_from_the_previous_good_one(tmp_path):
    _toy_checkpoints(tmp_path)
    f = tmp_path / 'step_0000004' / 'model.safetensors'
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    c, skipped = resumable_checkpoint(tmp_path)
    assert c.name == 'step_0000002' and len(skipped) == 1 and 'model.safetensors truncated' in skipped[0]


def test_damaged_checkpoints_everywhere_stop_naming_them(tmp_path):
    _toy_checkpoints(tmp_path)
    for s in ('step_0000002', 'step_0000004'):
        (tmp_path / s / 'trainer_state.json').write_text('{"step": ')
    with pytest.raises(DataError, match='no whole checkpoint to resume from .*step_0000004: trainer_state.json malformed'):
        resumable_checkpoint(tmp_path)


class _Killed(Exception):
    pass


def test_training_passes_over_a_damaged_checkpoint(shapes, tmp_path, capsys, monkeypatch):
    "A run killed after step 4 whose newest checkpoint is then damaged: the same command resumes from step 2."
    args = ['train', '--config', 'shapes_tiny', f'data={shapes}', 'source=files', f'out={tmp_path}', 'pseudo_label=0',
            'stages=[vqa]', 'steps.vqa=6', 'batch_size=8', 'checkpoint_every=2', 'log_every=1']
    init = trainer.Trainer.__init__
    def init_and_die_at_4(self, *a, **k):
        init(self, *a, **k)
        self.callbacks.append(lambda tr, state: (_ for _ in ()).throw(_Killed()) if state['step'] == 4 else None)
    monkeypatch.setattr(trainer.Trainer, '__init__', init_and_die_at_4)
    with pytest.raises(_Killed):
        main(args)
    monkeypatch.setattr(trainer.Trainer, '__init__', init)
    f = tmp_path / 'checkpoints' / 'vqa' / 'step_0000004' / 'model.safetensors'
    f.write_bytes(f.read_bytes()[:-100])
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'vqa: passed over a damaged checkpoint' in out and 'step_0000004: model.safetensors truncated' in out
    assert 'vqa: resuming from' in out and 'step_0000002 (step 2)' in out
    assert (tmp_path / 'vqa.safetensors').is_file()


def test_damaged_stage_weights_are_named(shapes, tmp_path, capsys):
    assert main(['train', '--config', 'shapes_tiny', f'data={shapes}', 'source=files', f'out={tmp_path}',
                 'pseudo_label=0', 'stages=[vqa]', 'steps.vqa=1', 'batch_size=8']) == 0
    f = tmp_path / 'vqa.safetensors'
    f.write_bytes(f.read_bytes()[:1000])
    capsys.readouterr()
    assert f'{f}: truncated' in cli_error(capsys, 'eval', '--run', tmp_path)


def test_a_directory_that_is_not_a_run(capsys, tmp_path):
    assert f"{tmp_path / 'config.yaml'}: not a run directory" in cli_error(capsys, 'eval', '--run', tmp_path)
    assert 'not a run directory' in cli_error(capsys, 'predict', '--run', tmp_path / 'nowhere', '--image', 'x.png')


# ---------------------------------------------------------------- results given to the metrics

@pytest.mark.parametrize('results, message', [
    ({'question_id': 1, 'answer': 'yes'}, 'expected a list of {question_id, answer}, got dict'),
    ([{'question_id': 1, 'answer': 3}], 'answer must be a string, got 3'),
    ([{'answer': 'yes'}], "results[0]: missing field 'question_id'"),
    (['yes'], 'results[0]: expected a JSON object, got str'),
])
def test_vqa_results_of_the_wrong_type(shapes, results, message):
    with pytest.raises(DataError, match=message.replace('[', r'\[').replace('{', r'\{').replace('}', r'\}')):
        vqa_accuracy(*vqa_paths(shapes, 'val'), results)


def test_caption_results_of_the_wrong_type(shapes):
    ann = shapes / 'annotations' / 'captions_val.json'
    with pytest.raises(DataError, match='caption must be a string, got None'):
        caption_metrics(ann, [{'image_id': 1, 'caption': None}])
    with pytest.raises(DataError, match='expected a list of'):
        caption_metrics(ann, {'image_id': 1, 'caption': 'a red circle'})


def test_check_command_exit_status_and_report(root, capsys):
    _first_image(root, 'val').unlink()
    assert main(['data', 'check', str(root), '--no-decode']) == 1
    out = capsys.readouterr().out
    assert 'error   val    missing image (1):' in out and '1 error(s), 0 warning(s)' in out
    assert main(['data', 'check', str(root), '--split', 'train']) == 0
    assert main(['data', 'check', str(root / 'nowhere')]) == 1
    assert 'no data root' in capsys.readouterr().out


def test_nan_and_inf_are_not_silently_accepted_as_numbers():
    "YAML reads .nan / .inf as floats: the checks see them as such."
    for v in ('.nan', '.inf', '-.inf'):
        with pytest.raises(ValueError, match='lr must be a finite number'):
            load_config(None, [f'lr={v}'])


def test_query_readout_needs_cross_fusion():
    "The pooled question replaces cross fusion's per-token read-out: a config pairing it with another fusion fails."
    assert load_config(None, ['fusion_readout=query']).fusion_readout == 'query'
    with pytest.raises(ValueError, match="fusion_readout='query' needs fusion='cross', got fusion='late'"):
        load_config(None, ['fusion_readout=query', 'fusion=late'])
    with pytest.raises(ValueError, match="fusion_readout must be 'first', 'eot' or 'query'"):
        load_config(None, ['fusion_readout=mean'])
