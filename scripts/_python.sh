# Sourced by scripts/*: finds a Python >= 3.12 and makes .venv with routecar installed.
# Order: $PYTHON, python3.13, python3.12, python3, then interpreters under pyenv.
set -eu
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local c
  for c in ${PYTHON:-} python3.13 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1 && _ok "$c"; then command -v "$c"; return 0; fi
  done
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /opt/python*/bin/python3; do
    if [ -x "$c" ] && _ok "$c"; then echo "$c"; return 0; fi
  done
  echo "routecar needs Python >= 3.12 (mitmproxy 12). Install one (e.g. 'pyenv install 3.12' or your distro's python3.12)" >&2
  echo "or point PYTHON at it: PYTHON=/path/to/python3.12 $0" >&2
  return 1
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! _ok "$VENV/bin/python"; then
    local py; py="$(find_python)"
    echo "==> creating $VENV with $py ($("$py" --version 2>&1))" >&2
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  local stamp="$VENV/.routecar-installed"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "==> installing routecar[test] into $VENV (first run only)" >&2
    if ! install_with_uv; then install_with_pip; fi
    touch "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# uv (from PyPI, into the venv) resolves, downloads and installs in parallel: ~30 s for
# routecar[test] where pip takes about a minute. ROUTECAR_INSTALLER=pip skips it; if uv
# cannot be had or fails, pip does the install as before. --compile-bytecode, as pip does:
# where PYTHONDONTWRITEBYTECODE is set, nothing would ever write the .pyc files, and every
# process (each proxy a test starts) would compile mitmproxy & co. again (~3 s of CPU).
install_with_uv() {
  [ "${ROUTECAR_INSTALLER:-uv}" = uv ] || return 1
  if [ ! -x "$VENV/bin/uv" ]; then
    "$VENV/bin/python" -m pip install -q uv >/dev/null 2>&1 || {
      echo "    (uv could not be installed: using pip)" >&2; return 1; }
  fi
  # One line per package installed; errors show in full.
  ( set -o pipefail
    "$VENV/bin/uv" pip install --compile-bytecode --python "$VENV/bin/python" -e "$ROOT[test]" 2>&1 \
      | sed -u -e 's/^/    /' >&2 ) || {
    echo "    (uv failed: installing with pip)" >&2; return 1; }
}

install_with_pip() {
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # One line per package as pip gets to it (not a minute of silence); errors still show in full.
  ( set -o pipefail
    "$VENV/bin/python" -m pip install --progress-bar off -e "$ROOT[test]" 2>&1 \
      | grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|ERROR|error)' \
      | sed -u -e 's/ (from .*//' -e 's/^/    /' -e 's/^\(.\{110\}\).*/\1 .../' >&2 )
}
