#!/usr/bin/env bash
# Idempotent environment setup (make setup). Run from anywhere; works on the repo root.
#   - creates .venv (Python 3.11) if missing
#   - installs torch (local CPU wheel) first, then the project with its extras, constrained
#     by constraints.txt
#   - makes PyPI's CUDA torchvision work on CPU torch where needed (tools/torchvision_cpu_fix.py)
#   - installs Mosquitto for the broker tests (Debian, as root) if /usr/sbin/mosquitto is missing
#   - installs Chromium and chromium-driver for the live view's browser test (Debian, as root)
# Work already done is skipped: a stamp in .venv holds the hash of the inputs.
# Environment: SETUP_EXTRAS (default "edge,sink,learned,models,llm,grounding,diffusion,metrics,dev"; "" for none), PYTHON (interpreter for a
# new venv, default python3.11), TORCH_PIP_ARGS (extra pip arguments for the torch install,
# e.g. "--index-url https://download.pytorch.org/whl/cpu" where no local CPU wheel exists).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
EXTRAS=${SETUP_EXTRAS-edge,sink,learned,models,llm,grounding,diffusion,metrics,dev}
EXTRAS=${EXTRAS// /}
LOG=$VENV/setup.log
STAMP=$VENV/.setup-stamp
T0=$SECONDS

say() { echo "[setup] $*"; }
die() {
    echo "[setup] ERROR: $*" >&2
    exit 1
}
# Run a command quietly, its output going to the log; on failure die naming the last error.
quiet() {
    local what=$1
    shift
    echo "+ $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        local last
        last=$(grep -E '^(ERROR|error|E:|Error)' "$LOG" | tail -n 1 || true)
        [[ -n $last ]] || last=$(tail -n 1 "$LOG")
        die "$what failed: ${last} (full log: $LOG)"
    fi
}

[[ -f pyproject.toml && -f constraints.txt ]] || die "run from the repository root (pyproject.toml, constraints.txt)"

# ---- virtual environment -------------------------------------------------------------------
if [[ ! -e $VENV ]]; then
    PY=${PYTHON:-}
    if [[ -z $PY ]]; then
        if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
    fi
    command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY'; install Python 3.11 or set PYTHON=/path/to/python3.11"
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
        || die "$PY is not Python 3.11 (the pinned CPU torch wheel is cp311); set PYTHON=/path/to/python3.11"
    say "creating $VENV ($("$PY" -c 'import platform; print("Python", platform.python_version())'))"
    "$PY" -m venv "$VENV" || die "could not create $VENV with $PY (Debian: apt-get install python3.11-venv)"
fi
VPY=$VENV/bin/python
"$VPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
    || die "$VENV is broken or not Python 3.11; remove it (rm -rf $VENV) and run make setup again"

# ---- skip if nothing changed ---------------------------------------------------------------
key=$( {
    cat pyproject.toml setup.py constraints.txt tools/setup_env.sh tools/torchvision_cpu_fix.py
    echo "extras=$EXTRAS torch_args=${TORCH_PIP_ARGS:-}"
    "$VPY" -c 'import sys; print(sys.version)'
} | sha256sum | cut -c1-16)

if [[ -f $STAMP && $(cat "$STAMP") == "$key" ]]; then
    say "python environment up to date ($VENV)"
else
    rm -f "$STAMP"
    : >"$LOG"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    pip_install() { quiet "pip install $*" "$VPY" -m pip install -q "$@"; }

    # torch first, from the local CPU wheel (when the chosen extras need torch at all); refuse
    # to silently pull the multi-GB CUDA build from PyPI.
    needs_torch=$("$VPY" - "$EXTRAS" <<'PYEOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [e for e in sys.argv[1].split(",") if e]
reqs = list(project.get("dependencies", []))
for extra in extras:
    reqs += project.get("optional-dependencies", {}).get(extra, [])
print(int(any(re.match(r"(torch|torchvision|compressai|open_clip_torch)\b", r) for r in reqs)))
PYEOF
) || die "cannot read pyproject.toml"
    if [[ $needs_torch == 1 ]]; then
        TORCH_SPEC=$(grep -E '^torch==' constraints.txt | head -n 1 | sed 's/[[:space:]#].*//')
        [[ -n $TORCH_SPEC ]] || die "constraints.txt has no torch== pin"
        have_torch=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
        if [[ $have_torch != "${TORCH_SPEC#torch==}"* ]]; then
            if [[ -z ${TORCH_PIP_ARGS:-} ]]; then
                want=${TORCH_SPEC#torch==}
                links=$("$VPY" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p")
                found=""
                for d in $links ${PIP_FIND_LINKS:-}; do
                    d=${d#file://}
                    compgen -G "$d/torch-${want}+cpu-*.whl" >/dev/null && found=$d && break
                done
                [[ -n $found ]] || die "no local CPU wheel torch-${want}+cpu in pip find-links (PyPI's torch is a multi-GB CUDA build); set TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu', or TORCH_PIP_ARGS to any pip option to take what pip finds"
            fi
            say "installing $TORCH_SPEC"
            # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of words
            pip_install ${TORCH_PIP_ARGS:-} "$TORCH_SPEC"
        fi
        say "torch $("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')"
    fi

    target="."
    [[ -n $EXTRAS ]] && target=".[$EXTRAS]"
    say "installing discover-sdk${EXTRAS:+ [$EXTRAS]} (editable)"
    pip_install -c constraints.txt -e "$target"

    if "$VPY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torchvision") is None)' 2>/dev/null; then
        say "checking torchvision on this torch"
        "$VPY" tools/torchvision_cpu_fix.py || exit 1
    fi
    echo "$key" >"$STAMP"
fi

# ---- Mosquitto (system package; the tests start their own broker) --------------------------
if [[ ! -x /usr/sbin/mosquitto ]] && ! command -v mosquitto >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing mosquitto (apt-get)"
        mkdir -p "$VENV" && touch "$LOG"
        export DEBIAN_FRONTEND=noninteractive
        quiet "apt-get update" apt-get update -qq
        quiet "apt-get install mosquitto" apt-get install -y -qq mosquitto
    else
        say "WARNING: mosquitto not found (the broker tests need it); install it: apt-get install mosquitto"
    fi
fi

# ---- opencv-doc (Debian): vtest.avi, whose frames 500+ are the held-out evaluation split -----
if [[ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing opencv-doc (apt-get; vtest.avi for the held-out benchmarks)"
        mkdir -p "$VENV" && touch "$LOG"
        export DEBIAN_FRONTEND=noninteractive
        quiet "apt-get update" apt-get update -qq
        quiet "apt-get install opencv-doc" apt-get install -y -qq opencv-doc
    else
        say "NOTE: vtest.avi missing (held-out benchmarks); install it: apt-get install opencv-doc"
    fi
fi

# ---- Chromium + chromedriver (Debian; the live view's browser test drives them) -------------
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing chromium and chromium-driver (apt-get, ~100 MB)"
        mkdir -p "$VENV" && touch "$LOG"
        export DEBIAN_FRONTEND=noninteractive
        quiet "apt-get update" apt-get update -qq
        quiet "apt-get install chromium" apt-get install -y -qq chromium chromium-driver
    else
        say "WARNING: chromium/chromedriver not found (the browser test skips); install them: apt-get install chromium chromium-driver"
    fi
fi

say "ready in $((SECONDS - T0)) s"
