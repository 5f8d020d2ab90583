# Sourced by the launchers: sets PY to the Python interpreter that has cit_fast, so nothing needs
# activating. Order: $CIT_FAST_PYTHON; the repository's .venv (made by `make venv`); python3 on PATH.
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n "${CIT_FAST_PYTHON:-}" ]]; then
  PY=$CIT_FAST_PYTHON
elif [[ -x "$_here/../.venv/bin/python" ]]; then
  PY="$_here/../.venv/bin/python"
else
  PY=$(command -v python3 || command -v python || true)
fi
if [[ -z "$PY" ]] || ! "$PY" -c "import cit_fast" 2>/dev/null; then
  echo "$(basename "$0"): no Python with cit_fast found (tried ${PY:-python3}); run 'make venv' in the repository," \
       "or set CIT_FAST_PYTHON=/path/to/python of the environment where cit_fast is installed" >&2
  exit 2
fi
