"""The trainer: two processes (DDP, and FSDP2) equal one, kill-and-resume equals an uninterrupted run, NaN stops
cleanly, and a checkpoint interrupted while being written never replaces the last good one."""
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
from mmkt_lib.trainer import Trainer
from mmkt_lib.checkpoint import latest_checkpoint, load_checkpoint
from mmkt_lib.config import load_config

BIN = Path(sys.executable).parent


def _env():
    return {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", 'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('d') / 'shapes'
    make_shape_scenes(root, 64, 8, 8, seed=0)
    return root


def _train(out, data, *extra, launcher=(), crash_at=0):
    """Three stages, a few steps each (12 logged steps), checkpoints every 2 steps. Not `pretrain`: its matching loss
    mines hard negatives within each process's batch, so it is not meant to equal one process's (chapter 14)."""
    entry = [str(Path(__file__).parent / '_crash_run.py')] if crash_at else ['-m', 'mmkt_lib.cli']
    cmd = [*launcher, *entry, 'train', '--config', 'shapes_tiny', 'stages=[contrastive,vqa,caption]',
           'steps.contrastive=6', 'steps.vqa=4', 'steps.caption=2', 'batch_size=16', 'log_every=1',
           'checkpoint_every=2', 'pseudo_label=0', f'out={out}', f'data={data}', 'device=cpu', *extra]
    if not launcher: cmd = [sys.executable, *cmd]
    env = {**_env(), 'MMKT_TEST_CRASH_AT_STEP': str(crash_at)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _two_processes():
    """`accelerate launch` with two processes. `--multi_gpu` is Accelerate's torchrun launcher; on a machine without GPUs
    its processes train on the CPU over gloo (`--cpu --num_processes 2` would start a single process)."""
    return [str(BIN / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
            '--main_process_port', str(_free_port()), '--mixed_precision', 'no', '--dynamo_backend', 'no']


def _free_port():
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _losses(out):
    return [(r['stage'], r['step'], r['loss']) for r in map(json.loads, (Path(out) / 'metrics.jsonl').read_text().splitlines())]


def _same_curve(a_dir, b_dir, tol, processes=1):
    """Same steps, same losses. Over several processes the caption loss, a mean over each process's tokens (whose
    counts differ between processes), is only close: 1e-3 relative."""
    a, b = _losses(a_dir), _losses(b_dir)
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 12
    for (s, k, la), (_, _, lb) in zip(a, b):
        assert la == (pytest.approx(lb, rel=1e-3) if s == 'caption' and processes > 1 else pytest.approx(lb, abs=tol)), (s, k, la, lb)


@pytest.fixture(scope='module')
def one(tmp_path_factory, data):
    "The reference: one process, uninterrupted."
    out = tmp_path_factory.mktemp('one') / 'run'
    r = _train(out, data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '1 process (NO)' in r.stdout
    return out


def test_two_processes_give_the_loss_curve_of_one(tmp_path, data, one):
    two = _train(tmp_path / 'two', data, launcher=_two_processes())
    assert two.returncode == 0, two.stderr[-3000:]
    assert 'contrastive: 2 processes (MULTI_CPU)' in two.stdout                  # DDP really ran, over two processes
    assert 'vqa: 2 processes (MULTI_CPU), mixed precision no; froze 5 parameters' in two.stdout   # CLIP's unused heads
    _same_curve(one, tmp_path / 'two', 1e-4, processes=2)


def test_fsdp_gives_the_loss_curve_of_one_and_resumes(tmp_path, data, one):
    """FSDP2 over two processes: the same curve as one process, whole-tensor checkpoints written from the shards and
    read back into them after a kill, and final weights that load into a plain model and match the reference's."""
    from safetensors.torch import load_file
    out = tmp_path / 'fsdp'
    killed = _train(out, data, 'fsdp=true', crash_at=3, launcher=_two_processes())
    assert killed.returncode != 0 and 'contrastive: 2 processes (FSDP, FSDP2)' in killed.stdout, killed.stderr[-3000:]
    assert latest_checkpoint(out / 'checkpoints' / 'contrastive').name == 'step_0000002'
    again = _train(out, data, 'fsdp=true', launcher=_two_processes())
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'resuming from' in again.stdout
    _same_curve(one, out, 1e-4, processes=2)
    # the caption gradients differ slightly (the loss is a mean over each process's tokens), and Adam's normalised step
    # moves a weight whose gradient is near zero by about lr per step either way: 2 runs x 2 steps x lr 1e-3 apart.
    # VQA: the last text block's weights reach the answer only through the keys and values of the one position the last
    # fusion layer computes; their gradients are small enough for the sharded reduction order to move them by ~1e-4
    for stage, tol in (('contrastive', 1e-4), ('vqa', 5e-4), ('caption', 2 * 2 * 1e-3)):
        a, b = load_file(one / f'{stage}.safetensors'), load_file(out / f'{stage}.safetensors')
        assert a.keys() == b.keys()
        for k in a: assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=tol), (stage, k, (a[k] - b[k]).abs().max())


def test_fsdp_runs_every_stage_from_no_data_with_periodic_evaluation(tmp_path):
    "Two processes, a data root that does not exist yet (the main process generates it first), all four stages, and a \
validation every 2 steps (under FSDP it gathers the shards on every process, then the main one evaluates)."
    cmd = [*_two_processes(), '-m', 'mmkt_lib.cli', 'train', '--config', 'shapes_tiny', 'fsdp=true', 'pseudo_label=0',
           'n_train=64', 'n_val=16', 'n_test=16', 'steps={contrastive: 2, pretrain: 2, vqa: 2, caption: 2}', 'eval_every=2',
           'log_every=2', 'batch_size=16', f"out={tmp_path / 'run'}", f"data={tmp_path / 'fresh'}", 'device=cpu']
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'pretrain: 2 processes (FSDP, FSDP2)' in r.stdout
    rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['stage'] for r in rows if 'val_vqa' in r] == ['vqa'] and [r['stage'] for r in rows if 'val_CIDEr' in r] == ['caption']
    assert all((tmp_path / 'run' / f'{s}.safetensors').is_file() for s in ('contrastive', 'pretrain', 'vqa', 'caption'))


def test_a_run_killed_on_two_processes_resumes_on_one(tmp_path, data, one):
    "Checkpoints hold whole tensors keyed by parameter name and count global batches: the process count may change."
    killed = _train(tmp_path / 'r', data, crash_at=3, launcher=_two_processes())
    assert killed.returncode != 0 and 'contrastive: 2 processes' in killed.stdout, killed.stderr[-3000:]
    again = _train(tmp_path / 'r', data)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'contrastive: resuming from' in again.stdout and 'contrastive: 1 process (NO)' in again.stdout
    _same_curve(one, tmp_path / 'r', 1e-4)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, data, one):
    killed = _train(tmp_path / 'resumed', data, crash_at=3)   # dies after step 3 of stage 1
    assert killed.returncode == 17
    assert latest_checkpoint(tmp_path / 'resumed' / 'checkpoints' / 'contrastive').name == 'step_0000002'
    again = _train(tmp_path / 'resumed', data)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'resuming from' in again.stdout
    _same_curve(one, tmp_path / 'resumed', 1e-5)


def test_the_same_run_twice_writes_the_same_bytes_apart_from_wall_clock_time(tmp_path, data, one):
    "README's determinism claim: identical weights, losses and metrics; only the `seconds` fields differ."
    r = _train(tmp_path / 'again', data)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ('contrastive', 'vqa', 'caption'):
        assert (one / f'{stage}.safetensors').read_bytes() == (tmp_path / 'again' / f'{stage}.safetensors').read_bytes()
    strip = lambda out: [{k: v for k, v in json.loads(line).items() if k != 'seconds'}
                         for line in (Path(out) / 'metrics.jsonl').read_text().splitlines()]
    assert strip(one) == strip(tmp_path / 'again')
    assert (one / 'config.yaml').read_text().replace(str(one), '') == \
        (tmp_path / 'again' / 'config.yaml').read_text().replace(str(tmp_path / 'again'), '')


class _Toy(torch.utils.data.Dataset):
    def __len__(self): return 64
    def __getitem__(self, i): return torch.tensor([float(i % 7), 1.0]), torch.tensor(float(i % 7))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    calls = {'n': 0}
    def loss_fn(model, batch):
        calls['n'] += 1
        x, y = batch
        loss = F.mse_loss(model(x).squeeze(-1), y)
        return {'loss': loss * float('nan') if calls['n'] == 1 + 5 else loss}   # call 1: the probe of `freeze_unused`
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
import os
from mmkt_lib import checkpoint
from mmkt_lib.checkpoint import save_checkpoint
from mmkt_lib.trainer import cosine_schedule
m = nn.Linear(2, 1); opt = torch.optim.AdamW(m.parameters()); sch = cosine_schedule(opt, 10)
d = Path({str(tmp_path)!r})
save_checkpoint(d, m, opt, sch, {{'stage': 't', 'step': 2, 'epoch': 0, 'batch': 2}})
with torch.no_grad(): m.weight.fill_(float('nan'))
checkpoint.publish_checkpoint = lambda *a: os._exit(17)   # die with the parts written, before the commit point
save_checkpoint(d, m, opt, sch, {{'stage': 't', 'step': 4, 'epoch': 0, 'batch': 4}})
"""
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 17, r.stderr
    assert (tmp_path / 'step_0000004.tmp').is_dir() and not (tmp_path / 'step_0000004').exists()
    good = latest_checkpoint(tmp_path)
    assert good.name == 'step_0000002'
    m = nn.Linear(2, 1); load_checkpoint(good, m)
    assert torch.isfinite(m.weight).all()


def test_config_files_load():
    for name in ('shapes_tiny', 'shapes_default', 'shapes_demo', 'sort_of_clevr', 'coco_vqa_clip_b16'):
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


def test_bf16_autocast_trains_close_to_float32(tmp_path, data, one):
    """The mixed-precision path (`mixed_precision=bf16`, Accelerate's autocast; CPU autocast here, the same code as on a
    GPU): weights stay float32, matmuls run in bf16, and the loss curve tracks the float32 run's."""
    from safetensors.torch import load_file
    r = _train(tmp_path / 'bf16', data, 'mixed_precision=bf16')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(one), _losses(tmp_path / 'bf16')                                # `one` ran in float32 on the CPU
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 12
    assert [x[2] for x in a] != [x[2] for x in b]                                   # bf16 really ran
    for (s, k, la), (_, _, lb) in zip(a, b): assert lb == pytest.approx(la, rel=0.05), (s, k, la, lb)
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / 'bf16' / 'vqa.safetensors').values())


def test_periodic_evaluation_runs_at_every_multiple_of_eval_every_whatever_log_every_is(tmp_path):
    "eval_every=2 with log_every=3: evaluations at steps 2, 4, 6 (not only where the two intervals meet)."
    def loss_fn(model, batch):
        x, y = batch
        return {'loss': F.mse_loss(model(x).squeeze(-1), y)}
    seen = []
    def eval_fn(model):
        seen.append(model.training)
        return {'val_metric': 1.0}
    cfg = load_config(None, {'steps': "{'toy': 6}", 'batch_size': '8', 'log_every': '3', 'eval_every': '2',
                             'device': 'cpu'})
    Trainer(cfg, 'toy', nn.Linear(2, 1), loss_fn, _Toy(), None, tmp_path, eval_fn=eval_fn).fit()
    rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows if 'val_metric' in r] == [2, 4, 6]
    assert [r['step'] for r in rows if 'loss' in r] == [3, 6]
    assert len(seen) == 3


def test_callbacks_run_after_every_optimiser_step(tmp_path):
    def loss_fn(model, batch):
        x, y = batch
        return {'loss': F.mse_loss(model(x).squeeze(-1), y)}
    steps = []
    cfg = load_config(None, {'steps': "{'toy': 5}", 'batch_size': '8', 'grad_accum': '2', 'device': 'cpu'})
    Trainer(cfg, 'toy', nn.Linear(2, 1), loss_fn, _Toy(), None, tmp_path,
            callbacks=[lambda tr, state: steps.append(state['step'])]).fit()
    assert steps == [1, 2, 3, 4, 5]


def test_train_throughput_benchmark_smoke():
    "benchmarks/train_throughput.py on a tiny run: one line per stage (its demo-size figures are in RESULTS.md)."
    script = Path(__file__).parent.parent / 'benchmarks' / 'train_throughput.py'
    r = subprocess.run([sys.executable, str(script), '--config', 'shapes_tiny', '--n-train', '40', '--steps', '1',
                        '--warmup', '0', '--threads', '1'], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith('| ')]
    assert [l.split(' | ')[1] for l in lines] == ['contrastive', 'pretrain', 'vqa', 'caption']
    assert all('images/s' in l for l in lines)


def test_freeze_by_block_counts_keeps_those_blocks_bit_identical(tmp_path, data):
    "`freeze=[image:2, text:1]`: the towers' embeddings and first blocks stay as the first stage left them."
    from safetensors.torch import load_file
    r = _train(tmp_path / 'run', data, 'stages=[contrastive,vqa]', 'freeze=[image:2,text:1]')
    assert r.returncode == 0, r.stderr[-3000:]
    clip = load_file(str(tmp_path / 'run' / 'contrastive.safetensors'))
    vqa = load_file(str(tmp_path / 'run' / 'vqa.safetensors'))
    same = lambda k: torch.equal(clip[k], vqa['clip.' + k])
    assert same('visual.patch_embed.proj.weight') and same('visual.blocks.1.mlp.fc2.weight')
    assert same('text.token_embedding.weight') and same('text.blocks.0.attn.qkv.weight')
    assert not same('visual.blocks.2.attn.qkv.weight') and not same('text.blocks.1.attn.qkv.weight')
