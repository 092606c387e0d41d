"""Fail if the notebooks are not clean (nbdev_clean would change them) or mmkt_lib is out of sync with them
(nbdev_export would change it). Works on a temporary copy, so the checkout is never modified."""
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

root = Path(__file__).resolve().parent.parent
bin_dir = Path(sys.executable).parent


def tree(d: Path) -> dict:
    return {p.relative_to(d): p for p in sorted(d.rglob('*')) if p.is_file() and '__pycache__' not in p.parts
            and '.ipynb_checkpoints' not in p.parts}


def diff(a: Path, b: Path) -> list:
    ta, tb = tree(a), tree(b)
    out = [f"only in checkout: {k}" for k in ta.keys() - tb.keys()] + [f"would be created: {k}" for k in tb.keys() - ta.keys()]
    out += [f"would change: {k}" for k in ta.keys() & tb.keys() if not filecmp.cmp(ta[k], tb[k], shallow=False)]
    return sorted(out)


with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    for name in ('settings.ini', 'setup.py'): shutil.copy(root / name, tmp / name)
    for name in ('nbs', 'mmkt_lib'):
        shutil.copytree(root / name, tmp / name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    problems = []
    for cmd, what, d in (('nbdev_clean', 'notebooks are not clean: run `make export` (nbdev_clean)', 'nbs'),
                         ('nbdev_export', 'mmkt_lib is out of sync with the notebooks: run `make export` (nbdev_export)', 'mmkt_lib')):
        r = subprocess.run([str(bin_dir / cmd)], cwd=tmp, capture_output=True, text=True)
        if r.returncode: problems.append(f"{cmd} failed:\n{r.stdout}{r.stderr}"); continue
        d_ = diff(root / d, tmp / d)
        if d_: problems.append(what + '\n  ' + '\n  '.join(d_))
    if problems:
        print('\n'.join(problems), file=sys.stderr); sys.exit(1)
    print('notebooks clean; mmkt_lib in sync with the notebooks')
