# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with the sourcing recipe
# Helpers shared by recipes/lm/run.sh and recipes/mt/run.sh (sourced, not run).
#
# Every function fails loudly: a non-zero status and a message that says what to do.

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$RECIPES_DIR/.." && pwd)
USER_DIR="$REPO_DIR/fairseq_skd"
CHECKSUMS="$RECIPES_DIR/utils/checksums.tsv"

log() { printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Use the repository's environment (./setup_env.sh creates it) unless one is active already.
use_repo_venv() {
    local venv=${SKD_VENV:-$REPO_DIR/.venv}
    if [[ -z ${VIRTUAL_ENV:-} && -x $venv/bin/python ]]; then
        PATH="$venv/bin:$PATH"
        export PATH
    fi
}

# require_tool NAME HINT: fail with HINT when NAME is not on PATH.
require_tool() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH. $2"
}

# stage_enabled N: is stage N inside [--stage, --stop-stage]?
stage_enabled() { (( stage <= $1 && $1 <= stop_stage )); }

# Device: the GPU when nvidia-smi sees one and torch can use it, else --cpu.
# Sets the array device_flags (empty or (--cpu)) and the string device_name.
detect_device() {
    local force_cpu=$1
    device_flags=()
    device_name=cpu
    if (( force_cpu )); then
        device_flags=(--cpu)
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
        && python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        device_name="gpu ($(nvidia-smi -L | head -n 1))"
    else
        device_flags=(--cpu)
    fi
}

# ------------------------------------------------------------------ checksums and downloads
file_size() { stat -c %s "$1" 2>/dev/null || stat -f %z "$1"; }

# checksum_row NAME: the line of checksums.tsv for file NAME (empty when none is known).
checksum_row() {
    awk -F '\t' -v n="$1" '$1 == n { print; exit }' "$CHECKSUMS"
}

# record_sha256 FILE MANIFEST: append "sha256  size  path" for the record.
record_sha256() {
    local sum
    sum=$(sha256sum "$1" | cut -d ' ' -f 1)
    printf '%s  %s  %s\n' "$sum" "$(file_size "$1")" "$1" >>"$2"
}

# verify_file FILE MANIFEST: check FILE against the published checksum of its name, if any.
# A mismatch is fatal, except in --smoke mode (fixtures are samples, not the published files),
# where it is reported. Files without a published checksum are only recorded (sha256 + size)
# in MANIFEST so that a run can be compared with another one.
verify_file() {
    local file=$1 manifest=$2 name row algo expected size actual
    name=$(basename "$file")
    [[ -s $file ]] || die "$file is missing or empty."
    record_sha256 "$file" "$manifest"
    row=$(checksum_row "$name")
    if [[ -z $row ]]; then
        log "  $name: no published checksum known; recorded its sha256 in $manifest"
        return 0
    fi
    IFS=$'\t' read -r _ algo expected size _ <<<"$row"
    if [[ $algo == none ]]; then
        log "  $name: no published checksum known; recorded its sha256 in $manifest"
        return 0
    fi
    actual=$("${algo}sum" "$file" | cut -d ' ' -f 1)
    if [[ $actual == "$expected" ]] && [[ $size == - || $size == "$(file_size "$file")" ]]; then
        log "  $name: $algo OK ($expected)"
        return 0
    fi
    if (( ${smoke:-0} )); then
        log "  $name: $algo $actual is not the published $expected: expected in --smoke mode (a fixture sample)"
        return 0
    fi
    die "$file: $algo is $actual (size $(file_size "$file")), the published file has $expected (size $size).
    Delete it and run again to download it anew; if you trust this copy, edit $CHECKSUMS."
}

# url_of NAME: the download URL of file NAME from checksums.tsv.
url_of() {
    local row
    row=$(checksum_row "$1")
    [[ -n $row ]] || die "internal: no URL for $1 in $CHECKSUMS"
    cut -f 5 <<<"$row"
}

# fetch NAME DEST_DIR: download NAME (URL from checksums.tsv) into DEST_DIR, through a .part file
# so that an interrupted download is never taken for a complete one.
fetch() {
    local name=$1 dir=$2 url
    url=$(url_of "$name")
    mkdir -p "$dir"
    if [[ -s $dir/$name ]]; then
        return 0
    fi
    log "  downloading $url"
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -o "$dir/$name.part" "$url" \
            || die "download of $url failed. Download it yourself and pass its folder with --data-dir."
    elif command -v wget >/dev/null 2>&1; then
        wget -O "$dir/$name.part" "$url" \
            || die "download of $url failed. Download it yourself and pass its folder with --data-dir."
    else
        die "neither curl nor wget is installed: install one, or download $url yourself and pass its folder with --data-dir."
    fi
    mv "$dir/$name.part" "$dir/$name"
}

# find_one DIR NAME: the path of the file called NAME under DIR (searched recursively), or "".
find_one() {
    find -L "$1" -type f -name "$2" 2>/dev/null | LC_ALL=C sort | head -n 1
}

# ------------------------------------------------------------------ fairseq
# Variant -> criterion flags. Needs: skd_sigma skd_warmup skd_eta noise_std.
# Sets the array variant_flags.
variant_criterion_flags() {
    local skd=(--criterion self_kd_cross_entropy --skd-sigma "$skd_sigma"
               --skd-warmup-updates "$skd_warmup" --skd-alpha-step "$skd_eta")
    case $1 in
        baseline)  variant_flags=(--criterion cross_entropy) ;;
        # +Noise: plain cross-entropy (alpha stays 0) with noisy decoder input embeddings
        noise)     variant_flags=(--criterion self_kd_cross_entropy --skd-alpha-max 0
                                  --target-embed-noise "$noise_std") ;;
        skd)       variant_flags=("${skd[@]}") ;;
        noise_skd) variant_flags=("${skd[@]}" --target-embed-noise "$noise_std") ;;
        *) die "unknown variant '$1' (known: baseline noise skd noise_skd)" ;;
    esac
}

check_variants() {
    local v
    [[ -n ${variants// /} ]] || die "--variants is empty (known: baseline noise skd noise_skd)"
    for v in $variants; do variant_criterion_flags "$v"; done
}

# run_train SAVE_DIR ARGS...: fairseq-train with $nproc data-parallel workers
# (fairseq-skd-train --nproc), its output appended to SAVE_DIR/train.log.
# An interrupted run resumes from SAVE_DIR/checkpoint_last.pt (fairseq's default for the same
# --save-dir; a damaged one is replaced by the newest intact checkpoint first); a finished one
# leaves SAVE_DIR/.train.done and is skipped next time.
run_train() {
    local save_dir=$1
    shift
    if [[ -f $save_dir/.train.done ]]; then
        log "  $save_dir: trained already (.train.done), skipped"
        return 0
    fi
    mkdir -p "$save_dir"
    if [[ -f $save_dir/checkpoint_last.pt ]]; then
        log "  $save_dir: resuming from checkpoint_last.pt"
    fi
    local train=(fairseq-skd-train --nproc "${nproc:-1}" "$@" --save-dir "$save_dir")
    {
        printf '# %s' "$(date '+%Y-%m-%d %H:%M:%S')"
        printf ' %q' "${train[@]}"
        printf '\n'
    } >>"$save_dir/train.log"
    "${train[@]}" 2>&1 | tee -a "$save_dir/train.log" >&2
    [[ -f $save_dir/checkpoint_best.pt && -f $save_dir/checkpoint_last.pt ]] \
        || die "fairseq-train ended without $save_dir/checkpoint_best.pt / checkpoint_last.pt; see $save_dir/train.log"
    touch "$save_dir/.train.done"
}
