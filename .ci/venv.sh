#!/usr/bin/env bash
# Create $VENV if missing and (re)install the project into it whenever settings.ini, setup.py or the checkout's
# location changed since the last install. Fast when nothing changed.
set -euo pipefail
VENV=${VENV:-.venv}; PYTHON=${PYTHON:-python3}
here=$(pwd)
key=$(cat settings.ini setup.py | sha256sum | cut -c1-16)-$(echo "$here" | sha256sum | cut -c1-8)
stamp="$VENV/.mmkt-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  echo "installing mmkt and its dependencies into $VENV (pip install -e '.[dev]')"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q -e '.[dev]'
  echo "$key" > "$stamp"
fi
