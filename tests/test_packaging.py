"""settings.ini is the single source of dependencies: environment.yml and the pins nbdev needs must agree with it; the
wheel carries everything the commands need at run time."""
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent


def settings():
    c = configparser.ConfigParser(delimiters=['=']); c.read(ROOT / 'settings.ini')
    return c['DEFAULT']


def test_nbdev_pins():
    dev = settings()['dev_requirements'].split()
    for pin in ('nbdev==2.4.14', 'fastcore>=1.12.3,<2', 'execnb>=0.1.12,<0.2', 'ghapi<2'):
        assert pin in dev, pin
    s = settings()
    assert s['lib_name'] == 'mmkt_lib' and s['tst_flags'].split() == ['slow', 'gpu']
    assert s['console_scripts'].split() == ['mmkt=mmkt_lib.cli:main']


def test_environment_yml_matches_settings():
    env = yaml.safe_load((ROOT / 'environment.yml').read_text())
    pip = next(d['pip'] for d in env['dependencies'] if isinstance(d, dict))
    s = settings()
    assert sorted(pip) == sorted(s['requirements'].split() + s['dev_requirements'].split())
    assert any(str(d).startswith('openjdk') for d in env['dependencies'])  # METEOR / PTB tokenizer need Java


def test_torch_range_admits_the_local_build():
    from packaging.specifiers import SpecifierSet
    reqs = dict(r.split('>=', 1) if '>=' in r else (r, '') for r in settings()['requirements'].split())
    assert '2.14.1' in SpecifierSet('>=' + reqs['torch']) and '0.29.1' in SpecifierSet('>=' + reqs['torchvision'])


def test_wheel_installs_and_runs_the_tiny_demo_outside_the_checkout(tmp_path):
    "Build the wheel, install it into a target directory (reusing the installed dependencies) and run the tiny demo."
    src, wheels = tmp_path / 'src', tmp_path / 'wheels'   # a copy: the build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ('setup.py', 'settings.ini', 'README.md', 'LICENSE', 'MANIFEST.in'):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / 'mmkt_lib', src / 'mmkt_lib', ignore=shutil.ignore_patterns('__pycache__'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(src), '--no-deps', '--no-build-isolation', '-q',
                        '-w', str(wheels)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    whl = next(wheels.glob('mmkt_lib-*.whl'))
    names = zipfile.ZipFile(whl).namelist()
    for cfg in ('shapes_default', 'shapes_demo', 'shapes_tiny', 'shapes_selftrain', 'sort_of_clevr', 'coco_vqa_clip_b16'):
        assert f'mmkt_lib/configs/{cfg}.yaml' in names, cfg
    site = tmp_path / 'site'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(whl)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    work = tmp_path / 'elsewhere'
    work.mkdir()
    env = {**os.environ, 'PYTHONPATH': str(site), 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    where = subprocess.run([sys.executable, '-c', 'import mmkt_lib; print(mmkt_lib.__file__)'], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr   # the wheel, not the checkout
    r = subprocess.run([str(site / 'bin' / 'mmkt'), 'demo', '--preset', 'tiny', '--device', 'cpu'], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (work / 'runs' / 'shapes_tiny' / 'results.json').is_file(), sorted(p.name for p in work.rglob('*'))[:20]
