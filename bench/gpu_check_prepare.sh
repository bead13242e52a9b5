#!/usr/bin/env bash
# Prepares, on a machine WITH access to PyPI, the wheels that bench/gpu_check.sh installs on a
# GPU machine that has no network (Python 3.12, torch with CUDA and numpy 2 preinstalled).
#
#   bench/gpu_check_prepare.sh                  # -> .whl/ for CPython 3.12 (the GPU machine's)
#   SKD_WHEEL_PYTHON=python3.11 SKD_WHEEL_DIR=/tmp/whl311 bench/gpu_check_prepare.sh
#                                               # the same for another Python (a CPU dry run)
#
# What goes into the wheel folder (.whl/, git-ignored) and why:
# - fairseq-fixed 0.12.3.1, built here for the target Python. It is an sdist whose setup.py
#   imports torch to declare its torch C++ extensions (libbase, libnat, alignment_train_*),
#   which link one torch version's ABI and are loaded only by non-autoregressive models and
#   BASE layers, none of which this plugin uses. The build sees a stand-in for
#   torch.utils.cpp_extension that drops those extensions, so no torch is needed here; the
#   extensions fairseq needs (libbleu, data_utils_fast, token_block_utils_fast) are built.
#   The Cython ones are compiled against numpy 2 headers, which makes them load under numpy
#   1.26 and numpy 2 alike.
# - numpy 1.26.4: fairseq's --sample-break-mode eos needs np.compat, gone from numpy 2; the GPU
#   machine's numpy is 2.x. gpu_check.sh puts it first on the path only if torch, scipy and
#   scikit-learn of that machine still import with it (and says which numpy it used).
# - fairseq's runtime needs that the GPU machine lacks (its package list: /work/.library/
#   device/KINDS.md): hydra-core 1.3.2, omegaconf 2.3.0, antlr4-python3-runtime 4.9.3 (an
#   sdist, built here as a pure-Python wheel), bitarray. Everything else fairseq and the tests
#   import (torch, regex, sacrebleu, tqdm, scikit-learn, pyyaml, pytest, ...) is there.
# SHA256SUMS lists every wheel; gpu_check.sh checks it before installing.
# Idempotent: a wheel folder whose MANIFEST matches this script's pins is left as it is.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${SKD_WHEEL_DIR:-$repo/.whl}
target_python=${SKD_WHEEL_PYTHON:-}
build_root=${TMPDIR:-/tmp}/skd-gpu-wheels-build

FAIRSEQ=fairseq-fixed==0.12.3.1
BUILD_NUMPY=numpy==2.2.6    # headers the Cython extensions are compiled against
BUILD_CYTHON=cython==3.0.12
BINARY_WHEELS=(numpy==1.26.4 hydra-core==1.3.2 omegaconf==2.3.0 bitarray==3.12.3)
SOURCE_WHEELS=(antlr4-python3-runtime==4.9.3)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

log() { echo "[gpu_check_prepare $(date +%H:%M:%S)] $*" >&2; }
die() { echo "gpu_check_prepare.sh: $*" >&2; exit 1; }

# The Python the wheels are for: by default 3.12, the GPU machine's.
if [ -z "$target_python" ]; then
  candidates=(python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
  fi
  for candidate in "${candidates[@]}"; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      target_python=$candidate
      break
    fi
  done
fi
[ -n "$target_python" ] || die "no Python 3.12 found; install one (e.g. pyenv install 3.12) or set SKD_WHEEL_PYTHON"
py_version=$("$target_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_tag=cp${py_version/./}
log "target: CPython $py_version ($target_python), wheel folder $out"

manifest="fairseq $FAIRSEQ (built, build deps $BUILD_NUMPY $BUILD_CYTHON); ${BINARY_WHEELS[*]}; ${SOURCE_WHEELS[*]}; python $py_version"
if [ -f "$out/MANIFEST" ] && [ "$(head -1 "$out/MANIFEST")" = "$manifest" ] \
   && (cd "$out" && sha256sum --quiet -c SHA256SUMS); then
  log "$out is up to date"
else
  rm -rf "$out"
  mkdir -p "$out" "$build_root"

  # A build environment of the target Python, with what fairseq's setup.py needs besides torch.
  venv=$build_root/venv-$py_tag
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the build environment $venv"
    "$target_python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "$BUILD_NUMPY" "$BUILD_CYTHON" setuptools wheel 2>&1 | { grep -v "is ignored" || true; }

  # The stand-in for torch.utils.cpp_extension (see the header): fairseq's torch C++
  # extensions are declared but never built.
  stub=$build_root/torch-stub
  mkdir -p "$stub/torch/utils"
  echo '"""Build-time stand-in: only torch.utils.cpp_extension, for fairseq'"'"'s setup.py."""' \
    > "$stub/torch/__init__.py"
  : > "$stub/torch/utils/__init__.py"
  cat > "$stub/torch/utils/cpp_extension.py" <<'PY'
"""Stand-in for torch.utils.cpp_extension while building fairseq without torch: extensions
declared with CppExtension (they need libtorch) are left out of the build."""
from setuptools import Extension
from setuptools.command.build_ext import build_ext


def CppExtension(name, sources, *args, **kwargs):
    ext = Extension(name, sources, language="c++")
    ext.needs_torch = True
    return ext


class BuildExtension(build_ext):
    def finalize_options(self):
        super().finalize_options()
        self.extensions = [e for e in self.extensions if not getattr(e, "needs_torch", False)]
PY

  log "building $FAIRSEQ for $py_tag without its torch C++ extensions (~1-2 minutes)"
  (unset CUDA_HOME; PYTHONPATH=$stub "$venv/bin/python" -m pip wheel -q --disable-pip-version-check \
     --no-deps --no-build-isolation --no-cache-dir --no-binary fairseq-fixed "$FAIRSEQ" -w "$out") \
    2>&1 | { grep -v "is ignored" || true; }

  log "building ${SOURCE_WHEELS[*]} (pure Python)"
  "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
    "${SOURCE_WHEELS[@]}" -w "$out" 2>&1 | { grep -v "is ignored" || true; }

  log "downloading ${BINARY_WHEELS[*]} for $py_tag manylinux x86_64"
  platform_args=()
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: --python-version "$py_version" --implementation cp "${platform_args[@]}" \
    -d "$out" "${BINARY_WHEELS[@]}" 2>&1 | { grep -v "is ignored" || true; }

  # Every wheel must be there, one version each, and fairseq must hold its compiled extensions.
  for spec in "$FAIRSEQ" "${BINARY_WHEELS[@]}" "${SOURCE_WHEELS[@]}"; do
    name=${spec%%==*}; version=${spec#*==}
    n=$(find "$out" -maxdepth 1 -iname "${name//-/_}-${version}-*.whl" | wc -l)
    [ "$n" = 1 ] || die "expected one wheel of $spec in $out, found $n"
  done
  fairseq_whl=$(find "$out" -maxdepth 1 -name 'fairseq_fixed-*.whl')
  contents=$(unzip -Z1 "$fairseq_whl")  # not piped into grep -q: pipefail would see SIGPIPE
  for ext in fairseq/libbleu fairseq/data/data_utils_fast fairseq/data/token_block_utils_fast; do
    grep -q "^$ext\.cpython-${py_version/./}-.*\.so$" <<< "$contents" || die "$fairseq_whl lacks $ext"
  done

  (cd "$out" && sha256sum -- *.whl > SHA256SUMS)
  {
    echo "$manifest"
    echo "made by bench/gpu_check_prepare.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -m), $(ldd --version 2>&1 | head -1)"
  } > "$out/MANIFEST"
fi

ls -l "$out"
size=$(du -sb "$out" | cut -f1)
echo "wheel folder $out: $((size / 1024)) KiB in all ($(awk -v s="$size" 'BEGIN {printf "%.1f", s / 1048576}') MiB; what travels to the device machine is limited to 64 MiB with the repository)"
