"""settings.ini is the single source of dependencies: environment.yml and the pins nbdev needs must agree with it."""
import configparser
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
