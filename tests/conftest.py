import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmkt_lib.data import make_shape_scenes

FIXTURES = Path(__file__).parent / 'fixtures'


@pytest.fixture(scope='session')
def shapes(tmp_path_factory):
    "A small default-preset ShapeScenes data set, generated once per test session."
    root = tmp_path_factory.mktemp('data') / 'shapes'
    make_shape_scenes(root, 120, 40, 40, seed=0)
    return root


@pytest.fixture(scope='session')
def soc(tmp_path_factory):
    "A small Sort-of-CLEVR data set."
    root = tmp_path_factory.mktemp('data') / 'soc'
    make_shape_scenes(root, 60, 20, 0, preset='sort_of_clevr', seed=3)
    return root


@pytest.fixture
def coco_mini(tmp_path):
    "The hand-written COCO / VQA v2 fixture (real file layout) plus JPEG images made here."
    root = tmp_path / 'coco'
    shutil.copytree(FIXTURES / 'coco_mini', root)
    (root / 'val2014').mkdir()
    for iid, size in ((42, (480, 640)), (73, (640, 424))):
        Image.new('RGB', size, (iid, 100, 200)).save(root / 'val2014' / f'COCO_val2014_{iid:012d}.jpg', quality=90)
    return root
