"""The chapters' stored outputs: execute chapters at reading size, and check what is stored.

    python .ci/chapter_outputs.py run 05_vit 06_clip   execute these chapters in place (IN_TEST unset, `#| slow` and
                                                       `#| gpu` cells skipped, one thread), store their outputs, the
                                                       CPU time at the top and a fingerprint in nbs/executed.json
    python .ci/chapter_outputs.py check                fail unless every chapter carries an image (00_core and
                                                       90_cli aside), no chapter carries an error, and no chapter's
                                                       outputs are older than its code

A chapter's fingerprint is the hash of its code cells, of the mmkt_lib modules it imports and of the records
(nbs/*.json) it names: when any of them changes, the stored outputs no longer show the code and the check names the
chapter and the command that refreshes it."""
import fcntl
import hashlib
import json
import os
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nbs = root / 'nbs'
RECORD = nbs / 'executed.json'
NO_FIGURE = {'00_core', '90_cli'}       # the core utilities and the command-line appendix show no pictures
SKIP = ('slow', 'gpu')                  # the flags nbdev_test skips (settings.ini tst_flags)
CPU_LINE = '*CPU time:'


def code_cells(nb: dict) -> list:
    return [c for c in nb['cells'] if c['cell_type'] == 'code']


def src(cell: dict) -> str:
    return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def skipped(cell: dict) -> bool:
    "Cells the reading-size run leaves out: flagged slow / gpu, or the closing `nbdev_export()`."
    first = src(cell).lstrip().split('\n', 1)[0]
    flags = set(re.findall(r'\w+', first[3:])) if first.startswith('#|') else set()
    return bool(flags & set(SKIP)) or 'nbdev.nbdev_export()' in src(cell)


def fingerprint(name: str, nb_dir: Path = nbs, lib: Path = root / 'mmkt_lib') -> dict:
    "Hashes of what a chapter's outputs depend on: its code cells, the modules it imports, the records it names."
    nb = json.loads((nb_dir / f'{name}.ipynb').read_text())
    code = '\n'.join(src(c) for c in code_cells(nb))
    mods = sorted(set(re.findall(r'(?:from|import) mmkt_lib\.(\w+)', code)))
    records = sorted(p.name for p in nb_dir.glob('*.json') if p.name != RECORD.name and p.name in code)
    sha = lambda b: hashlib.sha256(b).hexdigest()[:16]
    return {'code': sha(code.encode()),
            'modules': {m: sha((lib / f'{m}.py').read_bytes()) for m in mods},
            'records': {r: sha((nb_dir / r).read_bytes()) for r in records}}


def set_cpu_line(nb: dict, seconds: float, smaller: bool):
    "State the CPU time under the chapter's title (first markdown cell), replacing an earlier statement."
    mins = f"about {max(1, round(seconds / 60))} min" if seconds >= 90 else f"about {round(seconds)} s"
    line = (f"{CPU_LINE} {mins} on one CPU core at the size shown here"
            + ("; `nbdev_test` runs a smaller version" if smaller else "") + ".*")
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'markdown')
    lines = [l for l in src(cell).split('\n') if not l.startswith(CPU_LINE)]
    at = next((i + 1 for i, l in enumerate(lines) if l.startswith('> ')), 1)
    cell['source'] = '\n'.join(lines[:at] + ['', line] + lines[at:]).replace('\n\n\n', '\n\n')


NOISE = re.compile(r'site-packages/|^[WIE]\d{4} \d\d:\d\d:\d\d|\d+%\|')   # warnings, torch's log lines, progress bars


def quiet(outputs: list) -> list:
    """Drop what third-party packages print on stderr as they load (warnings naming this machine's paths, torch's
    log lines, progress bars): it teaches nothing and changes from run to run."""
    kept = []
    for o in outputs:
        if o.get('name') == 'stderr':
            lines, text = o['text'].split('\n'), []
            for i, l in enumerate(lines):
                if NOISE.search(l) or (i and 'site-packages/' in lines[i - 1] and l.startswith('  ')): continue
                text.append(l)
            o['text'] = '\n'.join(text)
            if not o['text'].strip(): continue
        kept.append(o)
    return kept


def cpu_seconds(pid: int) -> float:
    "CPU time of a process and of its finished children (data workers, Java for METEOR, chapters run for weights)."
    import psutil
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def run(name: str) -> float:
    """Execute one chapter in place at reading size; return its CPU seconds (the kernel's, so that other work on the
    machine does not inflate them)."""
    import nbformat
    from nbclient import NotebookClient
    path = nbs / f'{name}.ipynb'
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name='python3', resources={'metadata': {'path': str(nbs)}})
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        t0 = cpu_seconds(pid)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            if skipped(cell):
                cell.outputs = []
                continue
            client.execute_cell(cell, i)
            cell.outputs = quiet(cell.outputs)
        seconds = cpu_seconds(pid) - t0
    set_cpu_line(nb, seconds, 'in_test()' in '\n'.join(src(c) for c in code_cells(nb)))
    nbformat.write(nb, path)
    return seconds


def check(nb_dir: Path = nbs, lib: Path = root / 'mmkt_lib') -> list:
    "One line per problem: an error output, a chapter without a figure, outputs never stored or older than the code."
    f = nb_dir / RECORD.name
    record = json.loads(f.read_text()) if f.is_file() else {}
    problems = []
    for path in sorted(nb_dir.glob('*.ipynb')):
        name, nb = path.stem, json.loads(path.read_text())
        outs = [o for c in code_cells(nb) for o in c.get('outputs', [])]
        if any(o['output_type'] == 'error' for o in outs): problems.append(f"{name}: carries an error output")
        if name not in NO_FIGURE and not any('image/png' in o.get('data', {}) for o in outs):
            problems.append(f"{name}: carries no figure (image output)")
        if name not in record: problems.append(f"{name}: never executed at reading size (no entry in {RECORD.name})")
        elif record[name]['fingerprint'] != fingerprint(name, nb_dir, lib):
            now, then = fingerprint(name, nb_dir, lib), record[name]['fingerprint']
            what = [k for k in now if now[k] != then.get(k)]
            problems.append(f"{name}: outputs older than its {' and '.join(what)}")
    return problems


def main(argv: list) -> int:
    if argv[:1] == ['check']:
        problems = check()
        for p in problems: print(p, file=sys.stderr)
        if problems:
            print("refresh with: .venv/bin/python .ci/chapter_outputs.py run NAME... (then nbdev_clean)",
                  file=sys.stderr)
            return 1
        print('chapter outputs: a figure in every chapter, no errors, none older than its code')
        return 0
    if argv[:1] != ['run'] or len(argv) < 2: print(__doc__, file=sys.stderr); return 2
    os.environ.pop('IN_TEST', None)
    os.environ['OMP_NUM_THREADS'] = '1'
    for name in argv[1:]:
        name = Path(name).stem
        seconds = run(name)
        with open(root / '.ci' / '.executed.lock', 'w') as lock:   # two runs at once write the record in turn
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
            record[name] = {'cpu_seconds': round(seconds, 1), 'threads': 1, 'fingerprint': fingerprint(name)}
            RECORD.write_text(json.dumps(dict(sorted(record.items())), indent=1) + '\n')
        print(f"{name}: {seconds:.0f} CPU s")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
