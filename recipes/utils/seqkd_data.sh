#!/usr/bin/env bash
# Sequence-level knowledge distillation's training data (Kim and Rush 2016): the training set of a
# binarized translation corpus translated by a teacher with beam search, then binarized with the
# corpus's own dictionaries for a student to train on. recipes/mt/run.sh runs it before its
# Seq-KD variants train (docs/distillation.md); it runs alone too:
#
#   recipes/utils/seqkd_data.sh --teacher TEACHER.pt --data-bin DATA_BIN --out OUT_DIR \
#       --source-lang en --target-lang fi [--nproc 2] [-- fairseq-generate flags]
#
# The training set is translated in shards: shard I of N is every N-th batch of one
# `fairseq-generate --gen-subset train` (--distributed-world-size N --distributed-rank I-1), so
# the shards together are exactly the batches of an unsharded run, whatever --nproc. Each shard
# is written to shards/I.gen.part and renamed to shards/I.gen once complete: run again after a
# kill, only the shards without their .gen are translated. --nproc N translates N shards at once
# (on GPUs, shard after shard over the visible ones). Every training sentence must come back
# exactly once (fairseq-generate has dropped sentences: fairseq issue #5036) and goes back to
# its place in training order. The hypotheses keep the data's BPE: the teacher was trained on
# it and they are not de-BPE'd (no --remove-bpe), so they are binarized as they are.
#
# OUT_DIR holds:
#   bin/                 train: the teacher's sources and translations, binarized with DATA_BIN's
#                        dictionaries (the dict files are DATA_BIN's, byte for byte); valid and
#                        test: DATA_BIN's. What the student trains on.
#   text/train.SRC, text/train.TGT   the same as text, one sentence a line
#   translation.json     seconds (wall time translating), sentences, empty, truncated (at the
#                        length limit), beam, teacher, shards, nproc, their shares, max_len_a/b
#   shards/              I.gen (fairseq-generate's output), I.log, I.seconds
#   settings             what the shards are made with: a rerun with other settings is refused
#   .done                written last: a second run does nothing
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: $0 --teacher CKPT --data-bin DIR --out DIR --source-lang SRC --target-lang TGT [options] [-- fairseq-generate flags]

The training set of DIR (fairseq-preprocess'd) translated by CKPT, for a Seq-KD student.
  --teacher CKPT          the teacher's checkpoint, trained with DIR's dictionaries
  --data-bin DIR          the binarized corpus (train, valid, test, dict.SRC.txt, dict.TGT.txt)
  --out DIR               where the shards, the student's data (DIR/bin) and the report go
  --source-lang, --target-lang   the pair's languages (as in DIR's file names)
  --beam N                beam width (default 5, Kim and Rush's)
  --max-len-a A, --max-len-b B   the length limit int(A * source length + B) (default 0, 200:
                          fairseq-generate's); hypotheses that reach it are counted as truncated
  --shard-size N          sentences per shard (default 50000): the unit of resuming
  --nproc N               shards translated at once (default 1)
  --nj N                  fairseq-preprocess workers (default: number of cores)
  --cpu                   translate on CPU even when a GPU is available
Flags after -- go to fairseq-generate (batch size, --lenpen, ...), before this script's own.
EOF
}

teacher=
data_bin=
out=
source_lang=
target_lang=
beam=5
max_len_a=0
max_len_b=200
shard_size=50000
options="teacher data_bin out source_lang target_lang beam max_len_a max_len_b shard_size nproc nj"
switches="cpu"
# shellcheck source=parse_options.sh
. "$RECIPES_DIR/utils/parse_options.sh"
use_repo_venv

for option in teacher data_bin out source_lang target_lang; do
    [[ -n ${!option} ]] || { usage >&2; die "--${option//_/-} is required"; }
done
src=$source_lang
tgt=$target_lang
[[ -f $teacher ]] || die "--teacher $teacher: no such file"
teacher=$(absolute "$teacher")  # as the recipe names it in inputs.json
for f in "train.$src-$tgt.$src.idx" "train.$src-$tgt.$tgt.idx" "dict.$src.txt" "dict.$tgt.txt"; do
    [[ -f $data_bin/$f ]] || die "--data-bin $data_bin: $f not found (fairseq-preprocess --source-lang $src --target-lang $tgt makes it)"
done
[[ $beam =~ ^[1-9][0-9]*$ ]] || die "--beam takes a beam width >= 1, not '$beam'"
[[ $max_len_a =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--max-len-a takes a number >= 0, not '$max_len_a'"
[[ $max_len_b =~ ^[0-9]+$ ]] || die "--max-len-b takes a whole number >= 0, not '$max_len_b'"
[[ $shard_size =~ ^[1-9][0-9]*$ ]] || die "--shard-size takes a number of sentences >= 1, not '$shard_size'"
[[ $nproc =~ ^[1-9][0-9]*$ ]] || die "--nproc takes a number of shards at once >= 1, not '$nproc'"
[[ $nj =~ ^[1-9][0-9]*$ ]] || die "--nj takes a number of workers >= 1, not '$nj'"
require_tool fairseq-generate "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
(( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501 )) \
    || die "$0 needs bash 5.1 or later (wait -n -p), not $BASH_VERSION"
seqkd_py=$RECIPES_DIR/utils/seqkd.py
mkdir -p "$out/shards"

# What the shards are made with: shards of other settings must not be mixed (--nproc and the
# device do not change what a shard holds).
settings=$(printf '%s\n' "teacher $teacher" "data $(cd "$data_bin" && pwd)" "beam $beam" \
    "max_len_a $max_len_a" "max_len_b $max_len_b" "shard_size $shard_size" "generate ${extra[*]}")
if [[ ! -f $out/settings ]]; then echo "$settings" >"$out/settings"; fi
if [[ $(cat "$out/settings") != "$settings" ]]; then
    die "$out was started with other settings ($out/settings:" \
        "$(diff "$out/settings" <(echo "$settings") | grep '^[<>]' | tr '\n' ' ')): delete $out" \
        "to translate anew, or run with the settings it names"
fi
# A teacher trained again (its checkpoint newer) makes the translations of its old self stale.
stale=$(find "$out" -type f ! -name settings ! -newer "$teacher" -print -quit)
if [[ -n $stale ]]; then
    die "$out holds work older than its teacher $teacher ($stale): delete $out to translate with the teacher as it is now"
fi
if [[ -f $out/.done ]]; then
    log "  Seq-KD data of $teacher: done already ($out), skipped"
    exit 0
fi

# The teacher is checked against the data's dictionaries (its hypotheses would be binarized into
# other words otherwise), and the shards' data is cut from the training split.
prepared=$(python3 "$seqkd_py" prepare "$teacher" "$data_bin" "$src" "$tgt" "$out" \
               --shard-size "$shard_size") || die "preparing the shards in $out/shards failed (above)"
read -r n shards <<<"$prepared"

detect_device
gpus=()  # the shards in flight go to the visible GPUs in turn
if [[ " ${device_flags[*]} " != *" --cpu "* ]]; then
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
        IFS=, read -ra gpus <<<"$CUDA_VISIBLE_DEVICES"
    else
        mapfile -t gpus < <(nvidia-smi -L | awk '{ print NR - 1 }')
    fi
elif [[ -z ${OMP_NUM_THREADS:-} ]]; then
    # N shards at once on CPU share the cores rather than each spinning threads on all of them
    OMP_NUM_THREADS=$(( $(command nproc 2>/dev/null || echo 1) / nproc ))
    OMP_NUM_THREADS=$(( OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1 ))
    export OMP_NUM_THREADS
fi

# translate_shard I SLOT: shard I (1..N) into shards/I.gen, on the GPU of SLOT (0..nproc-1).
translate_shard() {
    local i=$1 data=$out/shards/$1 gen=$out/shards/$1.gen shard_log=$out/shards/$1.log start
    local count gpu=()
    start=$(date +%s.%N)
    count=$(( (i < shards ? i * shard_size : n) - (i - 1) * shard_size ))
    if (( ${#gpus[@]} )); then gpu=("CUDA_VISIBLE_DEVICES=${gpus[$(( $2 % ${#gpus[@]} ))]}"); fi
    local cmd=(fairseq-generate "$data" --user-dir "$USER_DIR" --path "$teacher"
               --source-lang "$src" --target-lang "$tgt" --gen-subset train "${extra[@]}"
               --beam "$beam" --nbest 1 --max-len-a "$max_len_a" --max-len-b "$max_len_b"
               --required-batch-size-multiple 1 "${device_flags[@]}")
    { printf '# %s ' "$(date '+%Y-%m-%d %H:%M:%S')"; printf '%q ' "${gpu[@]}" "${cmd[@]}"; echo; } >"$shard_log"
    if ! env "${gpu[@]}" "${cmd[@]}" >"$gen.part" 2>>"$shard_log"; then
        log "ERROR: shard $i of $shards: fairseq-generate failed. The last lines of $shard_log:"
        grep -v '^[[:space:]]*$' "$shard_log" | tail -n 15 | sed 's/^/    /' >&2
        return 1
    fi
    python3 "$seqkd_py" check-shard "$gen.part" "$count" || return 1
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f\n", b - a }' >"$out/shards/$i.seconds"
    mv "$gen.part" "$gen"
    rm -rf "$data"  # the shard's sources: a copy of part of the training split
    log "  shard $i of $shards: $count sentences in $(cat "$out/shards/$i.seconds") s"
}

todo=()
earlier=()  # shards a previous run finished
for ((i = 1; i <= shards; i++)); do
    if [[ -f $out/shards/$i.gen ]]; then earlier+=("$i"); else todo+=("$i"); fi
done
log "  Seq-KD data: $n training sentences translated by $teacher, beam $beam; shards of" \
    "$shard_size: $shards, $nproc at once; into $out"
if (( ${#earlier[@]} )); then
    log "  shards done already (a previous run): ${earlier[*]}; translating: ${todo[*]:-none}"
fi
start=$(date +%s.%N)
declare -A slot_of  # a running shard's process id: its slot
free=()
for ((s = nproc - 1; s >= 0; s--)); do free+=("$s"); done
failed=0
for i in "${todo[@]}"; do
    if (( ${#free[@]} == 0 )); then
        wait -n -p done_pid || failed=1
        free+=("${slot_of[$done_pid]}")
        unset "slot_of[$done_pid]"
    fi
    (( failed == 0 )) || break
    log "  shard $i of $shards: translating, fairseq-generate's log in $out/shards/$i.log"
    translate_shard "$i" "${free[-1]}" &
    slot_of[$!]=${free[-1]}
    unset "free[-1]"
done
while (( ${#slot_of[@]} )); do
    wait -n -p done_pid || failed=1
    unset "slot_of[$done_pid]"
done
(( failed == 0 )) || die "translating the training set failed (above); run again: the finished shards are kept"
# the wall time of this run's translating, plus that of the shards a previous run finished
seconds=$(for i in "${earlier[@]}"; do cat "$out/shards/$i.seconds"; done \
          | awk -v a="$start" -v b="$(date +%s.%N)" '{ s += $1 } END { printf "%.1f\n", s + b - a }')

# The hypotheses in training order, with the sources as the teacher read them; the report.
summary=$(python3 "$seqkd_py" merge "$out" --sentences "$n" --shard-size "$shard_size" \
              --src "$src" --tgt "$tgt" --max-len-a "$max_len_a" --max-len-b "$max_len_b" \
              --teacher "$teacher" --beam "$beam" --nproc "$nproc" --seconds "$seconds") \
    || die "the shards in $out/shards are not one translation of each training sentence (above): delete $out/shards and run again"

# Binarized with the data's dictionaries, so that the student's word ids are the teacher's.
rm -rf "$out/bin.part"
fairseq-preprocess --source-lang "$src" --target-lang "$tgt" --trainpref "$out/text/train" \
    --srcdict "$data_bin/dict.$src.txt" --tgtdict "$data_bin/dict.$tgt.txt" \
    --destdir "$out/bin.part" --workers "$nj" >"$out/preprocess.log" 2>&1 \
    || die "fairseq-preprocess failed; its log: $out/preprocess.log"
for f in "dict.$src.txt" "dict.$tgt.txt" "train.$src-$tgt.$src.bin" "train.$src-$tgt.$src.idx"; do
    cmp -s "$data_bin/$f" "$out/bin.part/$f" \
        || die "$out/bin.part/$f differs from $data_bin/$f: the student would not read the teacher's sources with the teacher's words"
done
for f in "$data_bin"/valid.* "$data_bin"/test.*; do
    case $f in *.bin|*.idx) cp "$f" "$out/bin.part/" ;; esac
done
rm -rf "${out:?}/bin"  # a run killed after this rename but before .done
mv "$out/bin.part" "$out/bin"
touch "$out/.done"
log "  Seq-KD data: $summary; $seconds s translating: $out/translation.json"
