"""The check `make test` runs on the chapters' stored outputs (.ci/chapter_outputs.py) catches what it is meant to."""
import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('chapter_outputs', ROOT / '.ci' / 'chapter_outputs.py')
co = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(co)

PNG = {'output_type': 'display_data', 'data': {'image/png': 'iVBORw0KGgo=', 'text/plain': '<Figure>'}, 'metadata': {}}


def _chapter(tmp: Path, name: str = '05_demo', outputs=(PNG,), code: str = "from mmkt_lib.core import in_test\n1"):
    "A one-cell chapter in tmp/nbs and a library in tmp/lib, recorded as executed."
    (tmp / 'nbs').mkdir(exist_ok=True)
    (tmp / 'lib').mkdir(exist_ok=True)
    shutil.copy(ROOT / 'mmkt_lib' / 'core.py', tmp / 'lib' / 'core.py')
    cell = {'cell_type': 'code', 'execution_count': None, 'id': 'a', 'metadata': {}, 'outputs': list(outputs),
            'source': code}
    nb = {'cells': [cell], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp / 'nbs' / f'{name}.ipynb').write_text(json.dumps(nb))
    fp = co.fingerprint(name, tmp / 'nbs', tmp / 'lib')
    record = {name: {'cpu_seconds': 1.0, 'threads': 1, 'fingerprint': fp}}
    (tmp / 'nbs' / 'executed.json').write_text(json.dumps(record))
    return tmp / 'nbs' / f'{name}.ipynb'


def _check(tmp: Path) -> list:
    return co.check(tmp / 'nbs', tmp / 'lib')


def test_checkout_chapters_pass():
    assert co.check() == []


def test_fresh_chapter_passes(tmp_path):
    _chapter(tmp_path)
    assert _check(tmp_path) == []
    assert co.fingerprint('05_demo', tmp_path / 'nbs', tmp_path / 'lib')['modules'].keys() == {'core'}


def test_error_and_missing_figure(tmp_path):
    err = {'output_type': 'error', 'ename': 'ValueError', 'evalue': 'x', 'traceback': []}
    _chapter(tmp_path, outputs=[err])
    assert _check(tmp_path) == ['05_demo: carries an error output', '05_demo: carries no figure (image output)']


def test_core_and_cli_need_no_figure(tmp_path):
    _chapter(tmp_path, name='00_core', outputs=[])
    assert _check(tmp_path) == []


def test_stale_code_module_and_record(tmp_path):
    nb = _chapter(tmp_path)
    d = json.loads(nb.read_text())
    d['cells'][0]['source'] += '\n2'
    nb.write_text(json.dumps(d))
    assert _check(tmp_path) == ['05_demo: outputs older than its code']
    _chapter(tmp_path)
    (tmp_path / 'lib' / 'core.py').write_text('# edited\n')
    assert _check(tmp_path) == ['05_demo: outputs older than its modules']
    _chapter(tmp_path, code="x = load_json('05_demo.json')")
    (tmp_path / 'nbs' / '05_demo.json').write_text('{}')
    assert _check(tmp_path) == ['05_demo: outputs older than its records']


def test_never_executed(tmp_path):
    _chapter(tmp_path)
    (tmp_path / 'nbs' / 'executed.json').write_text('{}')
    assert _check(tmp_path) == ['05_demo: never executed at reading size (no entry in executed.json)']


def test_skipped_cells():
    assert co.skipped({'source': '#| slow\nmodel = train(3000)'})
    assert co.skipped({'source': '#| hide\nimport nbdev\nnbdev.nbdev_export()'})
    assert not co.skipped({'source': '#| export\ndef f(): pass'})
    assert not co.skipped({'source': 'x = 1  # slow'})
