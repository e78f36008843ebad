# Sourced by ./fedkb and ./run-tests: make sure uv exists and the locked environment is
# installed. Needs only Python 3.11 and the package registries.
set -euo pipefail
FEDKB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  echo "fedkb: installing uv (first run only)..." >&2
  python3 -m pip install --quiet --user uv >&2 2>/dev/null \
    || python3 -m pip install --quiet uv >&2
fi
if ! command -v uv >/dev/null 2>&1; then
  uv() { python3 -m uv "$@"; }
fi
# Python 3.11 is required by tensorflow-federated 0.87; prefer the system one.
export UV_PYTHON="${UV_PYTHON:-3.11}"
uv sync --project "$FEDKB_ROOT" --frozen --quiet
