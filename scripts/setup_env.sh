#!/usr/bin/env bash
# Creates (or reuses) .venv with raveval and what its tests need. Idempotent:
# it reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.raveval-installed
want=$(sha256sum pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # CPU build of torch first, so the [hf] extra does not pull the CUDA one.
    .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    .venv/bin/python -m pip install -q -e ".[hf,dev]"
    echo "$want" > "$stamp"
fi
