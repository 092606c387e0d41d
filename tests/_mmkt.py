"The `mmkt` console script of this environment, run in a subprocess on one thread (for the command-line tests)."
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def mmkt(*args):
    env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", 'OMP_NUM_THREADS': '1'}
    return subprocess.run(['mmkt', *args], capture_output=True, text=True, env=env, timeout=600)
