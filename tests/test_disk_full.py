"""Disk full (ENOSPC) while writing a file, a checkpoint, a data set or a stage's weights: the write fails loudly and
nothing half-written is ever taken as complete. The full disk is simulated by writers that put down part of their
bytes and then raise `OSError(ENOSPC)`, as a real full disk does."""
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from mmkt_lib import checkpoint, core, pipeline
from mmkt_lib.checkpoint import latest_checkpoint, resumable_checkpoint, save_checkpoint
from mmkt_lib.cli import main
from mmkt_lib.core import atomic_write, save_json
from mmkt_lib.data import make_shape_scenes
from mmkt_lib.trainer import cosine_schedule


def _enospc(path=None):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)


class _HalfFile:
    "A file object that writes the first half of what it is given, then fails as a full disk does."
    def __init__(self, f): self.f = f
    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise _enospc()
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()


def test_atomic_write_keeps_the_old_file_and_leaves_no_debris(tmp_path, monkeypatch):
    f = tmp_path / 'results.json'
    save_json({'vqa': 50.0}, f)
    real_fdopen = os.fdopen
    monkeypatch.setattr(core.os, 'fdopen', lambda fd, mode: _HalfFile(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match='No space left on device'):
        save_json({'vqa': 61.0, 'caption': {'CIDEr': 1.2}}, f)
    assert json.loads(f.read_text()) == {'vqa': 50.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']
    with pytest.raises(OSError, match='No space left on device'):
        atomic_write(tmp_path / 'new.txt', 'x' * 1000)
    assert not (tmp_path / 'new.txt').exists()


def _toy():
    m = nn.Linear(4, 2)
    opt = torch.optim.AdamW(m.parameters())
    return m, opt, cosine_schedule(opt, 10)


def test_checkpoint_on_a_full_disk_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    m, opt, sch = _toy()
    save_checkpoint(tmp_path, m, opt, sch, {'stage': 't', 'step': 2, 'epoch': 0, 'batch': 2})
    real = checkpoint.save_file
    def half_then_full(tensors, path):
        real(tensors, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise _enospc(path)
    monkeypatch.setattr(checkpoint, 'save_file', half_then_full)
    with pytest.raises(OSError, match='No space left on device'):
        save_checkpoint(tmp_path, m, opt, sch, {'stage': 't', 'step': 4, 'epoch': 0, 'batch': 4})
    assert latest_checkpoint(tmp_path).name == 'step_0000002'
    assert resumable_checkpoint(tmp_path) == (tmp_path / 'step_0000002', [])
    assert not (tmp_path / 'step_0000004').exists() and (tmp_path / 'step_0000004.tmp').is_dir()


def test_a_data_set_cut_short_by_a_full_disk_is_regenerated_whole(tmp_path, monkeypatch):
    real, n = Image.Image.save, [0]
    def save(self, *a, **k):
        n[0] += 1
        if n[0] == 7: raise _enospc(a[0] if a else None)
        return real(self, *a, **k)
    monkeypatch.setattr(Image.Image, 'save', save)
    with pytest.raises(OSError, match='No space left on device'):
        make_shape_scenes(tmp_path / 'cut', 10, 4, 0, seed=1)
    monkeypatch.setattr(Image.Image, 'save', real)
    assert not (tmp_path / 'cut' / 'shapescenes.json').exists()        # never complete without its manifest
    make_shape_scenes(tmp_path / 'cut', 10, 4, 0, seed=1)
    make_shape_scenes(tmp_path / 'clean', 10, 4, 0, seed=1)
    files = sorted(p.relative_to(tmp_path / 'clean') for p in (tmp_path / 'clean').rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / 'cut') for p in (tmp_path / 'cut').rglob('*') if p.is_file())
    assert all((tmp_path / 'clean' / f).read_bytes() == (tmp_path / 'cut' / f).read_bytes() for f in files)


def test_stage_weights_on_a_full_disk_leave_the_stage_untrained(shapes, tmp_path, monkeypatch, capsys):
    def half_then_full(model, path):
        Path(path).write_bytes(b'\0' * 64)
        raise _enospc(path)
    monkeypatch.setattr(pipeline, 'save_model', half_then_full)
    args = ['train', '--config', 'shapes_tiny', f'data={shapes}', 'source=files', f'out={tmp_path}', 'pseudo_label=0',
            'stages=[vqa]', 'steps.vqa=2', 'batch_size=8']
    with pytest.raises(OSError, match='No space left on device'):
        main(args)
    assert not (tmp_path / 'vqa.safetensors').exists()
    capsys.readouterr()
    assert main(['eval', '--run', str(tmp_path)]) == 1
    assert 'no trained stage in this run' in capsys.readouterr().err
    monkeypatch.undo()
    assert main(args) == 0 and (tmp_path / 'vqa.safetensors').is_file()   # the same command finishes the stage
