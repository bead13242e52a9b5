# shellcheck shell=bash source-path=SCRIPTDIR disable=SC2034,SC2154  # variables shared with the sourcing recipe
# What recipes/lm/run.sh and recipes/mt/run.sh share (sourced, not run): logging, the options
# every recipe has, stage selection, the device, checksums and downloads, checks of a user's own
# corpus, and the train and collect stages. A recipe keeps its data stages and its settings.
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

# parse_recipe_options "OPTIONS" "$@": a recipe's command line, by utils/parse_options.sh, into
# the variables named in OPTIONS and the common switches; then the repository's environment.
parse_recipe_options() {
    local options=$1 switches=$common_switches
    shift
    # shellcheck source=parse_options.sh
    . "$RECIPES_DIR/utils/parse_options.sh"
    use_repo_venv
}

# require_tool NAME HINT: fail with HINT when NAME is not on PATH.
require_tool() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH. $2"
}

# ------------------------------------------------------------------ options and stages
# The options and switches every recipe has (for parse_options.sh), with their defaults.
common_options="stage stop_stage variants seeds data_dir corpus name prep_dir exp_dir model skd_args teacher nj nproc"
common_switches="cpu smoke"
stage=0
variants=paper
seeds=1
data_dir=
corpus=
name=
prep_dir=
exp_dir=
model=lstm
skd_args=
teacher=
nj=$(nproc 2>/dev/null || echo 1)
nproc=1
cpu=0
smoke=0
task=  # lm or mt: set by the recipe, whose variants fairseq_skd/variants.py then gives
teacher_variants=
seqkd_variants=
VARIANTS_PY="$USER_DIR/variants.py"   # the variants' one home; a script, no torch needed
# sentences of the training set scored after training (a fixed sample, the same for every run of
# the data) for the test - train NLL gap of the results: enough for a stable mean per token
train_sample=1000

common_usage() {
    cat <<EOF
  --stage N               first stage to run (default 0)
  --stop-stage M          last stage to run (default: the last)
  --variants "LIST"       the variants to train, names or groups (default: paper, the four
                          rows baseline noise skd noise_skd; distillation: the baseline and
                          the variants distilled from a teacher,
                          $(python3 "$VARIANTS_PY" expand distillation --task "$task" | tr '\n' ' ')
                          compare: SKD beside what one would use instead,
                          $(python3 "$VARIANTS_PY" expand compare --task "$task" | tr '\n' ' ')
                          all: every variant but the distilled ones):
                          $(python3 "$VARIANTS_PY" expand all --task "$task" | tr '\n' ' ')
  --seeds "LIST"          one training per seed and variant (default 1); the tables give
                          mean ± std over the seeds and say which variant beat the baseline
  --data-dir DIR          take the paper's raw files from DIR (searched recursively) instead
                          of downloading them
  --name NAME             the experiment's name: data/NAME and exp/NAME (default: the
                          dataset or pair, or the --corpus folder's name)
  --prep-dir DIR          where prepared data goes (default data/NAME)
  --exp-dir DIR           where runs and results go (default exp/NAME)
  --model lstm|transformer  the paper's LSTM model (default) or fairseq's transformer
                          (settings in recipes/conf, marked OURS)
  --skd-args "FLAGS"      fairseq-train flags for the variants that apply SKD only,
                          e.g. --skd-args "--skd-sigma auto"; flags after -- go to every variant
  --teacher PATH          the checkpoint the distilled variants (kd, skd_kd; MT: seqkd,
                          seqkd_skd) distil from, trained with this data's dictionaries
                          (default: the same seed's baseline)
  --nj N                  parallel jobs for data preparation (default: number of cores)
  --nproc N               data-parallel training workers (default 1): N GPUs, or on CPU N
                          workers sharing the cores (fairseq-skd-train --nproc); MT: also the
                          shards of the Seq-KD translation translated at once
  --cpu                   train on CPU even when a GPU is available
  --smoke                 tiny model and 2 epochs: a check of the plumbing in minutes on a CPU
                          (with --data-dir, --corpus or a synthetic --dataset)
  -h, --help              this message
Everything after '--' is appended to fairseq-train for every variant (e.g. -- --fp16).
EOF
}

# check_common_options: the values every recipe takes, checked before any work; the data and
# experiment folders named after $name unless given.
check_common_options() {
    if (( smoke )) && [[ -z $data_dir && -z $corpus && $dataset != synthetic* ]]; then
        die "--smoke runs offline on local files: pass --data-dir (e.g. tests/fixtures/$(basename "$(dirname "$0")" | sed 's/lm/ptb/; s/mt/wmt15/')) or --corpus, or use --dataset synthetic"
    fi
    prep_dir=${prep_dir:-data/$name}
    exp_dir=${exp_dir:-exp/$name}
    [[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || die "--stage and --stop-stage take numbers"
    (( stage <= stop_stage )) || die "--stage $stage --stop-stage $stop_stage selects no stage (the first comes after the last)"
    [[ $nproc =~ ^[1-9][0-9]*$ ]] || die "--nproc takes a number of workers >= 1, not '$nproc'"
    [[ $nj =~ ^[1-9][0-9]*$ ]] || die "--nj takes a number of jobs >= 1, not '$nj'"
    [[ $model == lstm || $model == transformer ]] || die "--model is lstm or transformer, not '$model'"
    local seed
    [[ -n ${seeds// /} ]] || die "--seeds is empty: give one or more seeds, e.g. --seeds \"1 2 3\""
    for seed in $seeds; do
        if [[ ! $seed =~ ^[0-9]{1,10}$ ]] || (( 10#$seed >= 4294967296 )); then
            die "--seeds takes whole numbers from 0 to 2**32 - 1 (fairseq's range), not '$seed'"
        fi
    done
    [[ -z $(tr ' ' '\n' <<<"$seeds" | sed '/^$/d' | sort | uniq -d) ]] \
        || die "--seeds $seeds: each seed once (a repeated seed trains the same run twice and counts it as two)"
    if [[ -n $data_dir && -n $corpus ]]; then
        die "--data-dir is for the paper's datasets and --corpus for your own: give one of them"
    fi
    if [[ -n $data_dir && ! -d $data_dir ]]; then die "--data-dir $data_dir is not a folder"; fi
    if [[ -n $corpus && ! -d $corpus ]]; then die "--corpus $corpus is not a folder"; fi
    if [[ -n $teacher && ! -f $teacher ]]; then die "--teacher $teacher: no such file"; fi
    if [[ -n $skd_args ]]; then
        local refused
        refused=$(python3 "$VARIANTS_PY" check-skd-args "$skd_args" 2>&1) || die "${refused#error: }"
    fi
    local flag
    for flag in "${extra[@]}"; do
        case $flag in
            --skd-*|--target-embed-noise*|--label-smoothing*)
                die "$flag after -- would go to every variant, and the baseline's criterion" \
                    "(cross_entropy) does not take it: give SKD flags with --skd-args \"...\"" ;;
        esac
    done
}

# require_python_packages NAME...: stop before any stage, in one line, when a Python package that
# the selected stages need is missing (fairseq_skd/cli/requirements.py, the tools' own check).
require_python_packages() {
    python3 "$USER_DIR/cli/requirements.py" "$(basename "$(dirname "$0")")/$(basename "$0")" "$@" \
        || exit 1
}

# stage_enabled N: is stage N inside [--stage, --stop-stage]?
stage_enabled() { (( stage <= $1 && $1 <= stop_stage )); }

# data_stage N NAME PREVIOUS WHAT FUNCTION: stage N of the data preparation, when selected:
# skipped once done (PREP_DIR/.NAME.done, written after FUNCTION succeeded), refused without
# the output of the step before it (PREP_DIR/.PREVIOUS.done).
data_stage() {
    local n=$1 name=$2 previous=$3 what=$4 step=$5
    stage_enabled "$n" || return 0
    log "stage $n: $what"
    if [[ -f $prep_dir/.$name.done ]]; then
        log "  done already ($prep_dir/.$name.done), skipped"
        return 0
    fi
    if [[ -n $previous && ! -f $prep_dir/.$previous.done ]]; then
        die "stage $n needs the output of stage $((n - 1)) ($prep_dir/.$previous.done is missing): run stage $((n - 1)) first"
    fi
    mkdir -p "$prep_dir"
    "$step"
    touch "$prep_dir/.$name.done"
}

# Device: the GPU when nvidia-smi sees one and torch can use it, else --cpu.
# Sets the array device_flags (empty or (--cpu)) and the string device_name.
detect_device() {
    device_flags=()
    device_name=cpu
    if (( cpu )); then
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

# ------------------------------------------------------------------ your own corpus
# check_corpus_files DIR FILE...: each FILE exists in DIR and holds some text.
check_corpus_files() {
    local dir=$1 f
    shift
    for f in "$@"; do
        [[ -f $dir/$f ]] || die "$dir/$f not found: --corpus $dir must hold $*"
        grep -q '[^[:space:]]' "$dir/$f" || die "$dir/$f is empty: --corpus $dir must hold text in $*"
    done
}

# check_parallel A B: A and B have the same number of lines.
check_parallel() {
    local a b
    a=$(wc -l <"$1")
    b=$(wc -l <"$2")
    [[ $a == "$b" ]] || die "$1 has $a lines but $2 has $b: not a parallel pair (one sentence a line on both sides)"
}

# check_language CODE WHAT: CODE is a language code sacremoses can be given; logs what it does
# with it (its rules for that language, or its generic ones).
check_language() {
    local said
    said=$(python "$RECIPES_DIR/utils/text_tools.py" language "$1" 2>&1) || die "$2: $said"
    log "  $said"
}

# ------------------------------------------------------------------ fairseq
# check_variants: expands --variants (names and groups) into the variants of the recipe's $task,
# through fairseq_skd/variants.py, which refuses unknown ones naming the known, and those of the
# other task. Sets variants, and teacher_variants and seqkd_variants: those of them that distil
# from a teacher, and those that train on its translations.
check_variants() {
    local expanded
    expanded=$(python3 "$VARIANTS_PY" expand "$variants" ${task:+--task "$task"} 2>&1) \
        || die "--variants: ${expanded#error: }"
    variants=$(tr '\n' ' ' <<<"$expanded")
    variants=${variants% }
    teacher_variants=$(python3 "$VARIANTS_PY" expand "$variants" --only teacher | tr '\n' ' ')
    seqkd_variants=$(python3 "$VARIANTS_PY" expand "$variants" --only translations | tr '\n' ' ')
    if [[ -z $teacher && -n $teacher_variants && ! " $variants " =~ \ baseline\  ]]; then
        die "--variants $variants: the distilled variants (${teacher_variants% }) distil from the" \
            "same seed's baseline unless --teacher PATH names a teacher: add baseline to" \
            "--variants or give --teacher"
    fi
}

# variant_criterion_flags VARIANT [TEACHER]: what VARIANT adds to fairseq-train, from
# fairseq_skd/variants.py (needs the recipe's task, the settings skd_sigma skd_warmup skd_eta
# noise_std, and skd_args). Sets the array variant_flags.
variant_criterion_flags() {
    local flags
    flags=$(python3 "$VARIANTS_PY" flags "$1" --sigma "$skd_sigma" --warmup "$skd_warmup" \
        --alpha-step "$skd_eta" --noise-std "$noise_std" --skd-args "${skd_args:-}" \
        --teacher "${2:-}" --task "$task" 2>&1) || die "variant $1: ${flags#error: }"
    mapfile -t variant_flags <<<"$flags"
}

# teacher_of SEED: the checkpoint the distilled variants of SEED distil from: --teacher, else that
# seed's baseline (born-again), which the train stage trains first.
teacher_of() {
    if [[ -n $teacher ]]; then echo "$teacher"; else echo "$(run_dir "$1" baseline)/checkpoint_best.pt"; fi
}

# absolute PATH: PATH from the root, through its folder's path as pwd gives it (the files that
# name other files name them so).
absolute() {
    if [[ -d $(dirname "$1") ]]; then
        echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    else
        case $1 in /*) echo "$1" ;; *) echo "$PWD/${1#./}" ;; esac
    fi
}

# seqkd_dir SEED: the Seq-KD data of SEED's teacher, one folder per teacher that its students
# share: EXP_DIR/seqkd_data/seed<N> for the born-again one (that seed's baseline), else
# EXP_DIR/seqkd_data/teacher_<the first 12 hex digits of the sha256 of --teacher's path>.
seqkd_dir() {
    if [[ -n $teacher ]]; then
        echo "$exp_dir/seqkd_data/teacher_$(absolute "$teacher" | sha256sum | cut -c 1-12)"
    else
        echo "$exp_dir/seqkd_data/seed$1"
    fi
}

# seqkd_data SEED DATA_BIN: the training set of DATA_BIN translated by SEED's teacher and
# binarized with DATA_BIN's dictionaries, in $(seqkd_dir SEED) (recipes/utils/seqkd_data.sh:
# resumes a killed translation, skips what is done). Needs the settings src, tgt, seqkd_beam,
# seqkd_shard_size, max_len_a, max_len_b and gen_flags (the MT recipe's).
seqkd_data() {
    local make=("$RECIPES_DIR/utils/seqkd_data.sh" --teacher "$(teacher_of "$1")" --data-bin "$2"
                --out "$(seqkd_dir "$1")" --source-lang "$src" --target-lang "$tgt"
                --beam "$seqkd_beam" --max-len-a "$max_len_a" --max-len-b "$max_len_b"
                --shard-size "$seqkd_shard_size" --nproc "$nproc" --nj "$nj")
    if (( cpu )); then make+=(--cpu); fi
    make+=(-- "${gen_flags[@]}")
    record_command "${make[@]}"
    "${make[@]}" </dev/null || die "making the Seq-KD data of $(teacher_of "$1") failed (above)"
}

# teacher_inputs SEED VARIANT: RUN/inputs.json of a distilled run, what its cost builds on:
# {"teacher": its checkpoint, "teacher_run": the teacher's run folder when it is one of this
# experiment's (the born-again baseline) else null, "translation": the Seq-KD data's
# translation.json or null}; absolute paths; rewritten only when it changes.
teacher_inputs() {
    local run teacher_run='' translation=''
    run=$(run_dir "$1" "$2")
    if [[ -z $teacher ]]; then teacher_run=$(absolute "$(run_dir "$1" baseline)"); fi
    if [[ " $seqkd_variants " == *" $2 "* ]]; then
        translation=$(absolute "$(seqkd_dir "$1")/translation.json")
    fi
    mkdir -p "$run"
    python3 "$RECIPES_DIR/utils/text_tools.py" json "$run/inputs.json" teacher \
        "$(absolute "$(teacher_of "$1")")" teacher_run "$teacher_run" translation "$translation"
}

# train_command VARIANT SEED DATA_BIN: VARIANT's fairseq-train flags for SEED, in the array
# train_args. Needs the settings (arch, train_flags, log_interval), device_flags and extra.
train_command() {
    variant_criterion_flags "$1" "$(teacher_of "$2")"
    train_args=("$3" --user-dir "$USER_DIR" --arch "$arch" "${train_flags[@]}" "${variant_flags[@]}"
                --seed "$2" --update-epoch-batch-itr True --required-batch-size-multiple 1
                --keep-last-epochs 2 --log-format json --log-interval "$log_interval"
                --no-progress-bar "${device_flags[@]}" "${extra[@]}")
}

# check_train_commands DATA_BIN: fairseq-train's own parser must take every variant's command
# line (the flags after -- and in --skd-args included), checked before any stage runs rather
# than when that variant's training starts.
check_train_commands() {
    local v check=()
    require_tool fairseq-skd-train "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    local born_again
    born_again=$(teacher_of 1)
    for v in $variants; do
        train_command "$v" 1 "$1"
        # a baseline not trained yet is the teacher: the parser checks that the file exists, so
        # the check of the command line takes the script itself in its place
        if [[ ! -f $born_again ]]; then train_args=("${train_args[@]/#$born_again/$0}"); fi
        check+=("$v" "${train_args[@]}" ---)
    done
    fairseq-skd-train --check "${check[@]}" \
        || die "fix the flags named above (after -- or in --skd-args); nothing was run"
}

# runs: "SEED VARIANT" a line, every run of the experiment in the order they are trained (a
# seed's baseline first: it is the teacher of its KD variants).
runs() {
    local seed v
    for seed in $seeds; do
        for v in baseline $variants; do
            if [[ $v != baseline || " $variants " == *" baseline "* ]]; then echo "$seed $v"; fi
        done | awk '!seen[$0]++'
    done
}

# run_dir SEED VARIANT: where that run's checkpoints, log and scores go.
run_dir() { echo "$exp_dir/seed$1/$2"; }

# train_stage N DATA_BIN: stage N, when selected: every run's training (resumed where it stopped,
# skipped when done), after the binarizing stage N - 1. A Seq-KD run trains on its teacher's
# translations of DATA_BIN's training set, made first (seqkd_data) unless it is trained already.
train_stage() {
    local seed v i=0 n data
    stage_enabled "$1" || return 0
    log "stage $1: train: $variants; seeds $seeds"
    [[ -f $prep_dir/.bin.done ]] || die "no binarized data in $2: run stage $(($1 - 1)) first"
    require_tool fairseq-skd-train "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
    n=$(runs | wc -l)
    while read -r seed v; do
        i=$((i + 1))
        data=$2
        if [[ " $seqkd_variants " == *" $v "* ]]; then
            data=$(seqkd_dir "$seed")/bin
            if [[ ! -f $(run_dir "$seed" "$v")/.train.done ]]; then seqkd_data "$seed" "$2"; fi
        fi
        if [[ " $teacher_variants " == *" $v "* ]]; then teacher_inputs "$seed" "$v"; fi
        train_command "$v" "$seed" "$data"
        run_train "$(run_dir "$seed" "$v")" "$v, seed $seed (run $i of $n)" "${train_args[@]}"
    done < <(runs)
}

# best_checkpoint SEED VARIANT TRAIN_STAGE: that run's checkpoint_best.pt, which must exist.
best_checkpoint() {
    local ckpt
    ckpt=$(run_dir "$1" "$2")/checkpoint_best.pt
    [[ -f $ckpt ]] || die "$ckpt not found: run stage $3 (train) for $2, seed $1 first"
    echo "$ckpt"
}

# score_subset TOOL BIN CKPT RUN WHAT SUBSET FLAGS...: fairseq-skd-score-lm/-mt (TOOL) of
# checkpoint CKPT on SUBSET into RUN/score_SUBSET.json, unless that is newer than CKPT.
score_subset() {
    local tool=$1 bin=$2 ckpt=$3 run=$4 what=$5 subset=$6 out=$4/score_$6.json
    shift 6
    if up_to_date "$out" "$ckpt"; then return 0; fi
    step "$run/score.log" "scoring $what on $subset" "$tool" "$bin" --path "$ckpt" \
        --subset "$subset" --json "$out.part" "$@" "${device_flags[@]}" \
        | sed "s/^/  $what: /" >&2
    mv "$out.part" "$out"
}

# score_train_sample TOOL BIN CKPT RUN WHAT: the NLL of checkpoint CKPT on a fixed sample of the
# training set, in eval mode as the test set is scored, into RUN/score_train.json.
score_train_sample() {
    score_subset "$@" train --max-sentences "$train_sample" --calibration-subset none \
        --qn-sigma none
}

# up_to_date OUT CKPT: OUT exists and is newer than CKPT (then it is not made again).
up_to_date() {
    [[ -f $1 && $1 -nt $2 ]]
}

# record_command ARGS...: append the command, quoted, to EXP_DIR/commands.sh (every command the
# recipe runs, in order, to re-run any step by hand).
record_command() {
    mkdir -p "$exp_dir"
    [[ -f $exp_dir/commands.sh ]] \
        || printf '#!/usr/bin/env bash\n# Every command the recipe ran, in order.\n' >"$exp_dir/commands.sh"
    { printf '%q ' "$@"; printf '\n'; } >>"$exp_dir/commands.sh"
}

# step LOG WHAT CMD...: run CMD (recorded in commands.sh) with its stderr appended to LOG; its
# stdout goes where the caller sends it. A failure stops the recipe with LOG's last lines.
step() {
    local log_file=$1 what=$2 status=0
    shift 2
    record_command "$@"
    mkdir -p "$(dirname "$log_file")"
    "$@" 2>>"$log_file" || status=$?
    if (( status != 0 )); then
        log "ERROR: $what failed: $(basename "$1") exited with status $status. The last lines of $log_file:"
        grep -v '^[[:space:]]*$' "$log_file" | tail -n 15 | sed 's/^/    /' >&2
        die "$what failed (the command is the last line of $exp_dir/commands.sh)"
    fi
}

# collect_stage N: stage N, fairseq-skd-collect EXP_DIR (tables over the seeds, each seed's
# tables and figures), unless its results are newer than every score file and log. $paper
# names the paper experiment whose numbers are printed beside ours (none for a corpus).
collect_stage() {
    log "stage $1: collect: fairseq-skd-collect $exp_dir"
    local args=(--task "$task" --name "$name" --paper "$paper")
    if (( smoke )); then args+=(--smoke); fi
    require_tool fairseq-skd-collect "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    if [[ -f $exp_dir/results.md && -z $(find "$exp_dir" \( -name '*.json' -o -name train.log \) \
            -newer "$exp_dir/results.md") ]]; then
        log "  $exp_dir/results.md is newer than every score file and log, kept"
        cat "$exp_dir/results.md"
    else
        record_command fairseq-skd-collect "$exp_dir" "${args[@]}"
        fairseq-skd-collect "$exp_dir" "${args[@]}" || die "fairseq-skd-collect $exp_dir failed"
    fi
}

# run_train SAVE_DIR WHAT ARGS...: fairseq-train with $nproc data-parallel workers
# (fairseq-skd-train --nproc), its output appended to SAVE_DIR/train.log and a line per epoch
# on the terminal. An interrupted run resumes from SAVE_DIR/checkpoint_last.pt (fairseq's
# default for the same --save-dir; a damaged one is replaced by the newest intact checkpoint
# first); a finished one leaves SAVE_DIR/.train.done and is skipped next time.
run_train() {
    local save_dir=$1 what=$2 status=0
    shift 2
    if [[ -f $save_dir/.train.done ]]; then
        log "  $what: trained already ($save_dir/.train.done), skipped"
        return 0
    fi
    mkdir -p "$save_dir"
    if [[ -f $save_dir/checkpoint_last.pt ]]; then
        log "  $what: resuming from $save_dir/checkpoint_last.pt"
    fi
    log "  $what: training, fairseq's log in $save_dir/train.log"
    local train=(fairseq-skd-train --nproc "${nproc:-1}" --log "$save_dir/train.log" "$@"
                 --save-dir "$save_dir")
    record_command "${train[@]}"
    "${train[@]}" || status=$?
    (( status == 0 )) || die "training $what failed (status $status); its log: $save_dir/train.log"
    [[ -f $save_dir/checkpoint_best.pt && -f $save_dir/checkpoint_last.pt ]] \
        || die "fairseq-train ended without $save_dir/checkpoint_best.pt / checkpoint_last.pt; see $save_dir/train.log"
    touch "$save_dir/.train.done"
}
