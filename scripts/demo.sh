#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the demo evaluation: local Ray, the tiny
# model the project builds, the bundled demo data. Extra args go to `raveval run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/raveval run demo "$@"
