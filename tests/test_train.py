"""The trainer: two processes equal one, kill-and-resume equals an uninterrupted run, NaN stops cleanly, and a
checkpoint interrupted while being written never replaces the last good one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from mmkt_lib.data import make_shape_scenes
from mmkt_lib.train import Trainer, latest_checkpoint, load_checkpoint, load_config

BIN = Path(sys.executable).parent


def _env():
    return {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", 'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('d') / 'shapes'
    make_shape_scenes(root, 64, 8, 8, seed=0)
    return root


def _train(out, data, *extra, launcher=()):
    cmd = [*launcher, '-m', 'mmkt_lib.cli', 'train', '--config', 'shapes_tiny', 'stages=[contrastive,vqa]',
           'steps.contrastive=6', 'steps.vqa=4', 'batch_size=16', 'log_every=1', 'pseudo_label=0', f'out={out}', f'data={data}', 'device=cpu', *extra]
    if not launcher: cmd = [sys.executable, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _losses(out):
    return [(r['stage'], r['step'], r['loss']) for r in map(json.loads, (Path(out) / 'metrics.jsonl').read_text().splitlines())]


def test_two_processes_give_the_loss_curve_of_one(tmp_path, data):
    one = _train(tmp_path / 'one', data)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(tmp_path / 'two', data, launcher=[str(BIN / 'accelerate'), 'launch', '--cpu', '--num_processes', '2',
                                                   '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no'])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 10
    for (s, k, la), (_, _, lb) in zip(a, b): assert la == pytest.approx(lb, abs=1e-4), (s, k, la, lb)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, data):
    full = _train(tmp_path / 'full', data, 'checkpoint_every=2')
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _train(tmp_path / 'resumed', data, 'checkpoint_every=2', 'crash_at_step=3')   # dies after step 3 of stage 1
    assert killed.returncode == 17
    assert latest_checkpoint(tmp_path / 'resumed' / 'checkpoints' / 'contrastive').name == 'step_0000002'
    again = _train(tmp_path / 'resumed', data, 'checkpoint_every=2')
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'resuming from' in again.stdout
    a, b = _losses(tmp_path / 'full'), _losses(tmp_path / 'resumed')
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (s, k, la), (_, _, lb) in zip(a, b): assert la == pytest.approx(lb, abs=1e-5), (s, k, la, lb)


class _Toy(torch.utils.data.Dataset):
    def __len__(self): return 64
    def __getitem__(self, i): return torch.tensor([float(i % 7), 1.0]), torch.tensor(float(i % 7))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    calls = {'n': 0}
    def loss_fn(model, batch):
        calls['n'] += 1
        x, y = batch
        loss = F.mse_loss(model(x).squeeze(-1), y)
        return {'loss': loss * float('nan') if calls['n'] == 5 else loss}
    cfg = load_config(None, {'steps': "{'toy': 10}", 'batch_size': '8', 'log_every': '1', 'checkpoint_every': '2', 'device': 'cpu', 'lr': '0.01'})
    model = nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match=r'toy: non-finite loss between steps 5 and 5 .*Last good checkpoint: .*step_0000004'):
        Trainer(cfg, 'toy', model, loss_fn, _Toy(), None, tmp_path).fit()
    good = latest_checkpoint(tmp_path / 'checkpoints' / 'toy')
    assert good.name == 'step_0000004'
    fresh = nn.Linear(2, 1)
    state = load_checkpoint(good, fresh)
    assert state['step'] == 4 and all(torch.isfinite(p).all() for p in fresh.parameters())


def test_a_checkpoint_interrupted_mid_write_never_replaces_the_last_good_one(tmp_path):
    script = f"""
import torch, torch.nn as nn
from pathlib import Path
from mmkt_lib.train import save_checkpoint, cosine_schedule
m = nn.Linear(2, 1); opt = torch.optim.AdamW(m.parameters()); sch = cosine_schedule(opt, 10)
d = Path({str(tmp_path)!r})
save_checkpoint(d, m, opt, sch, {{'stage': 't', 'step': 2, 'epoch': 0, 'batch': 2}})
with torch.no_grad(): m.weight.fill_(float('nan'))
save_checkpoint(d, m, opt, sch, {{'stage': 't', 'step': 4, 'epoch': 0, 'batch': 4}}, _crash=True)
"""
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 17, r.stderr
    assert (tmp_path / 'step_0000004.tmp').is_dir() and not (tmp_path / 'step_0000004').exists()
    good = latest_checkpoint(tmp_path)
    assert good.name == 'step_0000002'
    m = nn.Linear(2, 1); load_checkpoint(good, m)
    assert torch.isfinite(m.weight).all()


def test_config_files_load():
    for name in ('shapes_tiny', 'shapes_default', 'sort_of_clevr', 'coco_vqa_clip_b16'):
        cfg = load_config(name)
        assert cfg.name == name and cfg.stages
    with pytest.raises(FileNotFoundError, match='no such config file'): load_config('nope')


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    "Two micro-batches of 8 per step train exactly like one batch of 16 (a mean loss; same samples, same order)."
    def loss_fn(model, batch):
        x, y = batch
        return {'loss': F.mse_loss(model(x).squeeze(-1), y)}
    runs = {}
    for name, bs, acc in (('big', 16, 1), ('accum', 8, 2)):
        torch.manual_seed(0)
        cfg = load_config(None, {'steps': "{'toy': 6}", 'batch_size': str(bs), 'grad_accum': str(acc), 'log_every': '1',
                                 'device': 'cpu', 'lr': '0.05', 'clip_grad': '0'})
        model = nn.Linear(2, 1)
        Trainer(cfg, 'toy', model, loss_fn, _Toy(), None, tmp_path / name).fit()
        runs[name] = ([json.loads(l)['loss'] for l in (tmp_path / name / 'metrics.jsonl').read_text().splitlines()], model.weight.detach().clone())
    assert len(runs['big'][0]) == len(runs['accum'][0]) == 6
    assert runs['big'][0] == pytest.approx(runs['accum'][0], abs=1e-5)
    assert torch.allclose(runs['big'][1], runs['accum'][1], atol=1e-6)


def test_bf16_autocast_trains_close_to_float32(tmp_path, data):
    """The mixed-precision path (`mixed_precision=bf16`, Accelerate's autocast; CPU autocast here, the same code as on a
    GPU): weights stay float32, matmuls run in bf16, and the loss curve tracks the float32 run's."""
    from safetensors.torch import load_file
    for mp in ('no', 'bf16'):
        r = _train(tmp_path / mp, data, f'mixed_precision={mp}')
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(tmp_path / 'no'), _losses(tmp_path / 'bf16')
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 10
    assert [x[2] for x in a] != [x[2] for x in b]                                   # bf16 really ran
    for (s, k, la), (_, _, lb) in zip(a, b): assert lb == pytest.approx(la, rel=0.05), (s, k, la, lb)
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / 'bf16' / 'vqa.safetensors').values())
