#!/usr/bin/env bash
# Creates (or refreshes) the Python environment that fairseq-skd runs in, idempotently.
#
#   ./setup_env.sh            # .venv in the repo root; a second run takes seconds
#   SKD_VENV=/path/env ./setup_env.sh   # another (existing or new) virtual environment
#
# What it installs and why (see README "Installation"):
# - torch, pinned (SKD_TORCH_VERSION, default 2.13.0): the CPU build on machines without an
#   NVIDIA GPU, the default (CUDA) build where `nvidia-smi` sees one. A torch already importable
#   in the environment is kept as it is, so a user's own CUDA build is never replaced.
# - fairseq-fixed 0.12.3.1: upstream fairseq main plus the one fix that lets it import on
#   Python >= 3.11 (fairseq 0.12.2 does not). Built without build isolation and without its
#   declared deps (torchaudio would pull a second, CUDA torch); its runtime needs are in
#   requirements/fairseq-runtime.txt.
# - this plugin, editable, with its test and hf extras: its own dependencies (sacrebleu,
#   sacremoses, subword-nmt, matplotlib, tensorboard), pytest, and Hugging Face transformers with
#   accelerate (fairseq_skd.hf) come from pyproject.toml, with torch held at the installed build
#   and fairseq's pins as constraints.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${SKD_VENV:-$repo/.venv}
python=${PYTHON:-python3}
torch_version=${SKD_TORCH_VERSION:-2.13.0}
fairseq_spec="fairseq-fixed==0.12.3.1"

log() { echo "[setup_env $(date +%H:%M:%S)] $*" >&2; }

if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup_env.sh: '$python' not found; install Python 3.10 or 3.11, or set PYTHON=/path/to/python3" >&2
  exit 1
fi

# The stamp records exactly what was installed; a matching stamp plus a working import means
# there is nothing to do.
stamp_key=$(cat "$repo/requirements/fairseq-runtime.txt" "$repo/pyproject.toml" "$repo/setup_env.sh" \
  <(echo "$torch_version $fairseq_spec") | sha256sum | cut -d' ' -f1)
stamp=$venv/.fairseq-skd-setup
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ] \
   && "$venv/bin/python" -c "import fairseq, fairseq_skd" >/dev/null 2>&1; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
vpy=$venv/bin/python
# Some machines' pip configs name local index folders that lack most packages; pip warns about
# each one, which only buries what matters.
pip_install() {
  "$vpy" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if "$vpy" -c "import torch" >/dev/null 2>&1; then
  log "keeping the installed torch $("$vpy" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  log "NVIDIA GPU found: installing torch==$torch_version (CUDA build)"
  pip_install "torch==$torch_version"
else
  # No GPU: the CPU build. Machines whose pip config serves it (a local wheel folder or a
  # mirror) get it from there; otherwise it comes from PyTorch's CPU index. A plain
  # `torch` requirement would download several GB of CUDA packages instead.
  log "no NVIDIA GPU: installing torch==$torch_version+cpu"
  pip_install "torch==$torch_version+cpu" 2>/dev/null \
    || pip_install --index-url https://download.pytorch.org/whl/cpu "torch==$torch_version"
fi
installed_torch=$("$vpy" -c 'import torch; print(torch.__version__)')

fairseq_runtime=$repo/requirements/fairseq-runtime.txt
log "installing fairseq's runtime needs (requirements/fairseq-runtime.txt)"
# Naming the installed torch keeps pip from ever swapping it for another build. setuptools >= 77
# builds fairseq-fixed and this plugin without build isolation (pyproject.toml; editable
# installs need >= 64); torch 2.13 brings one, an older torch of the user's may not.
pip_install -r "$fairseq_runtime" "setuptools>=77" "torch==$installed_torch"

if ! "$vpy" -m pip show fairseq-fixed >/dev/null 2>&1; then
  log "building $fairseq_spec (about 2 minutes the first time; pip caches the wheel)"
  pip_install --no-build-isolation --no-deps "$fairseq_spec"
fi

log "installing fairseq-skd (editable) and its dependencies (pyproject.toml), transformers included"
# With its dependencies (no --no-deps), but torch held at the installed build and fairseq's
# runtime pins (numpy, sacrebleu) as constraints, so none of them can move.
pip_install --no-build-isolation -e "${repo}[test,hf]" -c "$fairseq_runtime" "torch==$installed_torch"

"$vpy" - <<'PY'
import importlib.util, sys
import torch, fairseq, fairseq_skd  # noqa: F401
if importlib.util.find_spec("torchaudio") is not None:
    sys.exit("setup_env.sh: torchaudio is installed in this environment but is not needed; "
             "it usually fails to import against a pinned torch: pip uninstall torchaudio")
print(f"fairseq-skd environment ready: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"fairseq {fairseq.__version__}, cuda available: {torch.cuda.is_available()}", file=sys.stderr)
PY
echo "$stamp_key" > "$stamp"
