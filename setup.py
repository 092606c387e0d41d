"""Package setup for nbdev 2: every piece of metadata and every dependency comes from settings.ini."""
from configparser import ConfigParser
from pathlib import Path
import shlex

import setuptools
from setuptools import setup

config = ConfigParser(delimiters=['='])
config.read(Path(__file__).parent / 'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description keywords author author_email'.split():
    assert key in cfg, f'settings.ini is missing "{key}"'

licenses = {'apache2': 'Apache-2.0'}  # SPDX expression (setuptools >= 77 rejects licence classifiers)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
            '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

min_python = cfg['min_python']
requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
export_requirements = shlex.split(cfg.get('export_requirements', ''))   # pip install mmkt_lib[export]: ONNX
quantize_requirements = shlex.split(cfg.get('quantize_requirements', ''))   # mmkt_lib[quantize]: torchao
console_scripts = cfg.get('console_scripts', '').split()
readme = Path(__file__).parent / 'README.md'

setup(
    name=cfg['lib_name'],
    license=licenses[cfg['license']],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    # namespace discovery, so that mmkt_lib/configs (the named YAML configurations, listed in MANIFEST.in) ships too
    packages=setuptools.find_namespace_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*'],
                                                exclude=['*.__pycache__']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'export': export_requirements, 'quantize': quantize_requirements},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + min_python,
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
    version=cfg['version'],
    description=cfg['description'],
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
)
