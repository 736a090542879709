# Shared by scripts/run and scripts/test: a virtualenv in .venv with the project
# installed (editable). Compiled kernels go where `fastcluster` itself puts them
# (core.config.numba_cache_base: $NUMBA_CACHE_DIR if set, else ~/.cache/fastcluster/numba),
# so the scripts, the console script, the demo and the tests share one cache.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing system packages: $*; install them with: sudo apt-get install $*" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {  # ensure_venv EXTRA  (EXTRA: "" or "[test]")
  local extra="${1:-}"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; python3 -m venv .venv; }
  fi
  local stamp=".venv/.installed${extra}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${extra}"
    touch "$stamp"
  fi
}
