"""The layout of mmkt_lib: no import cycle, and no module (or chapter) importing a module of a later chapter."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / 'mmkt_lib'


def _chapter_of_module() -> dict[str, str]:
    "module name -> the notebook it is exported from (by nbdev's 'File to edit' header)."
    out = {}
    for p in LIB.glob('*.py'):
        m = re.search(r'File to edit: \.\./nbs/(\w+)\.ipynb', p.read_text())
        if m:
            out[p.stem] = m.group(1)
    return out


def _imported_modules(tree: ast.AST, importer: str | None = None) -> set[str]:
    "mmkt_lib modules imported anywhere in `tree` (module level or inside functions), relative or absolute."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split('.')[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith('mmkt_lib.'):
                found.add(node.module.split('.')[1])
            elif node.module == 'mmkt_lib':
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('mmkt_lib.'))
    return found - {importer, '_modidx', '__init__'}


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imported_modules(ast.parse(p.read_text()), p.stem)
            for p in LIB.glob('*.py') if p.stem not in ('_modidx', '__init__')}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One import cycle of `graph` as a list of modules, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open':
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 'done'
        stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_cycle_finder_finds_cycles():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_cycle():
    assert _cycle(_graph()) is None


def _order(nb: str) -> tuple:
    "Sort key of a notebook name: its number, then the rest ('01a_x' after '01_y')."
    m = re.match(r'(\d+)(\w*?)_', nb)
    return int(m.group(1)), m.group(2)


def test_no_module_imports_a_later_chapter():
    chapter = _chapter_of_module()
    bad = [(m, n) for m, deps in _graph().items() for n in deps
           if m in chapter and n in chapter and _order(chapter[n]) > _order(chapter[m])]
    assert not bad, f"modules importing a module of a later chapter: {bad}"


@pytest.mark.parametrize('nb', sorted(p.name for p in (ROOT / 'nbs').glob('*.ipynb')))
def test_no_chapter_imports_a_later_chapter(nb):
    chapter = _chapter_of_module()
    cells = json.loads((ROOT / 'nbs' / nb).read_text())['cells']
    code = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'code')
    code = '\n'.join(l for l in code.splitlines() if not l.lstrip().startswith(('!', '%')))
    used = _imported_modules(ast.parse(code))
    later = sorted(m for m in used if m in chapter and _order(chapter[m]) > _order(nb))
    assert not later, f"{nb} imports {later}, exported by later chapters"


def _function_lengths() -> list[tuple[int, str]]:
    "(lines, module.function) of every function in mmkt_lib, longest first (nested ones included)."
    rows = []
    for p in LIB.glob('*.py'):
        if p.stem in ('_modidx', '__init__'):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f'{p.stem}.{node.name}'))
    return sorted(rows, reverse=True)


def test_functions_and_modules_read_at_a_glance():
    "No function over 40 lines, no module over 450 (the generated _modidx aside)."
    assert _function_lengths()[0][0] <= 40, _function_lengths()[:5]
    sizes = {p.name: len(p.read_text().splitlines()) for p in LIB.glob('*.py') if p.stem != '_modidx'}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda t: -t[1])[:3]


def _exported_names() -> dict:
    "Name of every exported function and class -> the chapter that defines it."
    defined = {}
    for path in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for cell in json.loads(path.read_text())['cells']:
            src = ''.join(cell['source'])
            if cell['cell_type'] == 'code' and src.startswith('#| export'):
                for m in re.finditer(r'^(?:def|class)\s+([A-Za-z]\w+)', src, re.M):
                    defined.setdefault(m.group(1), path.stem)
    return defined


# split names and dictionary keys that happen to share a name with a later chapter's function
_NOT_NAMES = {'train', 'pooled'}


def test_prose_names_nothing_before_it_is_taught():
    "A chapter's prose names (in backticks) no function or class of a later chapter without saying which chapter."
    defined, order = _exported_names(), [p.stem for p in sorted((ROOT / 'nbs').glob('*.ipynb'))]
    early = []
    for path in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for cell in json.loads(path.read_text())['cells']:
            if cell['cell_type'] != 'markdown': continue
            text = ''.join(cell['source'])
            for m in re.finditer(r'`([A-Za-z_]\w+)(?:\(\))?`', text):
                where = defined.get(m.group(1))
                near = text[max(0, m.start() - 60):m.end() + 20]
                if (where and m.group(1) not in _NOT_NAMES and order.index(where) > order.index(path.stem)
                        and not re.search(r'[Cc]hapter', near)):
                    early.append(f"{path.stem}: `{m.group(1)}` is taught in {where}")
    assert not early, early
