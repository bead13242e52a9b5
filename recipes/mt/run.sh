#!/usr/bin/env bash
# Translation with self-knowledge distillation: Table 3 and Fig. 4 of Hahn & Choi (2019), from
# the WMT'15 archives to detokenized sacreBLEU with beams 1 and 12 on the dev and test sets.
# Settings: recipes/conf/mt.sh; data sources and checksums: recipes/utils/checksums.tsv.
#
#   recipes/mt/run.sh --pair en-fi                     # all stages, the four variants
#   recipes/mt/run.sh --pair en-de --variants "baseline skd" --stage 4 -- --fp16
#   recipes/mt/run.sh --pair en-fi --smoke --data-dir tests/fixtures/wmt15 --exp-dir /tmp/exp
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# The whole script is one { ... } block: bash reads it completely before running it, so editing
# this file while a long training runs does not change (or break) the run.
{

# shellcheck source=../utils/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../utils/common.sh"

usage() {
    cat <<EOF
Usage: $0 --pair en-fi|fi-en|en-de [options] [-- extra fairseq-train flags]

Stages:
  0  data: download (or take from --data-dir) and verify the WMT'15 corpora, dev and test sets
  1  tokenize: sacremoses normalize + tokenize (-a); clean the training pairs
  2  bpe: subword-nmt joint BPE (10K for en-fi/fi-en, 30K for en-de)
  3  binarize: fairseq-preprocess
  4  train: fairseq-train, one run per variant (resumes from checkpoint_last.pt)
  5  decode: fairseq-generate, beams 1 and 12, dev and test; fairseq-skd-bleu (sacreBLEU)
  6  collect: fairseq-skd-collect EXP_DIR (results.md / results.csv / figures)

Options:
  --pair P                en-fi, fi-en or en-de (required)
  --stage N               first stage to run (default 0)
  --stop-stage M          last stage to run (default 6)
  --variants "LIST"       subset of: baseline noise skd noise_skd (default: all four)
  --data-dir DIR          take the data from DIR instead of downloading it: the archives
                          (e.g. europarl-v8.fi-en.tgz, test.tgz) or the files inside them
                          (e.g. europarl-v8.fi-en.fi, newstest2015-enfi-src.en.sgm),
                          searched recursively under DIR
  --prep-dir DIR          where prepared data goes (default data/wmt15_SRC_TGT)
  --exp-dir DIR           where runs and results go (default exp/wmt15_SRC_TGT)
  --nj N                  parallel jobs for data preparation (default: number of cores)
  --nproc N               data-parallel training workers (default 1): N GPUs, or on CPU N
                          workers sharing the cores (fairseq-skd-train --nproc)
  --cpu                   train and decode on CPU even when a GPU is available
  --smoke                 tiny model and 2 epochs on local files (needs --data-dir): a test
  -h, --help              this message
Everything after '--' is appended to fairseq-train (e.g. -- --fp16).
EOF
}

pair=
stage=0
stop_stage=6
variants="baseline noise skd noise_skd"
data_dir=
prep_dir=
exp_dir=
nj=$(nproc 2>/dev/null || echo 1)
nproc=1
force_cpu=0
smoke=0
extra=()

while (( $# )); do
    case $1 in
        --pair) pair=${2:?--pair needs a value}; shift 2 ;;
        --stage) stage=${2:?--stage needs a value}; shift 2 ;;
        --stop-stage) stop_stage=${2:?--stop-stage needs a value}; shift 2 ;;
        --variants) variants=${2?--variants needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --prep-dir) prep_dir=${2:?--prep-dir needs a value}; shift 2 ;;
        --exp-dir) exp_dir=${2:?--exp-dir needs a value}; shift 2 ;;
        --nj) nj=${2:?--nj needs a value}; shift 2 ;;
        --nproc) nproc=${2:?--nproc needs a value}; shift 2 ;;
        --cpu) force_cpu=1; shift ;;
        --smoke) smoke=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

case $pair in
    en-fi|fi-en|en-de) ;;
    "") usage >&2; die "--pair is required (en-fi, fi-en or en-de)" ;;
    *) usage >&2; die "unknown --pair '$pair' (en-fi, fi-en or en-de)" ;;
esac
[[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || die "--stage and --stop-stage take numbers"
[[ $nproc =~ ^[1-9][0-9]*$ ]] || die "--nproc takes a number of workers >= 1, not '$nproc'"
if (( smoke )) && [[ -z $data_dir ]]; then
    die "--smoke runs offline on local files: pass --data-dir (e.g. tests/fixtures/wmt15)"
fi
if [[ -n $data_dir && ! -d $data_dir ]]; then
    die "--data-dir $data_dir is not a folder"
fi

src=${pair%-*}
tgt=${pair#*-}
prep_dir=${prep_dir:-data/wmt15_${src}_${tgt}}
exp_dir=${exp_dir:-exp/wmt15_${src}_${tgt}}
use_repo_venv
# shellcheck source=../conf/mt.sh
. "$RECIPES_DIR/conf/mt.sh"
check_variants
detect_device "$force_cpu"
log "mt recipe: pair=$pair variants='$variants' stages $stage..$stop_stage device=$device_name nproc=$nproc" \
    "prep=$prep_dir exp=$exp_dir smoke=$smoke"

# ---- the WMT'15 data (http://www.statmt.org/wmt15/translation-task.html): for each part,
# "ARCHIVE FILE_en FILE_x" with FILE the name of a file inside ARCHIVE (x = fi or de). The
# archives' URLs and checksums are in recipes/utils/checksums.tsv.
if [[ $src == de || $tgt == de ]]; then
    x=de
    train_parts=(
        "training-parallel-europarl-v7.tgz europarl-v7.de-en.en europarl-v7.de-en.de"
        "training-parallel-commoncrawl.tgz commoncrawl.de-en.en commoncrawl.de-en.de"
        "training-parallel-nc-v10.tgz news-commentary-v10.de-en.en news-commentary-v10.de-en.de"
    )
    # dev: newstest2014 (the full 3003 sentences, sacrebleu's wmt14/full); test: newstest2015
    valid_part="test-full.tgz newstest2014-deen-src.en.sgm newstest2014-deen-ref.de.sgm"
    test_part="test.tgz newstest2015-ende-src.en.sgm newstest2015-ende-ref.de.sgm"
    valid_sacrebleu=wmt14/full
else
    x="fi"
    # Europarl v8 and Wiki Headlines are the WMT'15 Finnish-English parallel data.
    train_parts=(
        "europarl-v8.fi-en.tgz europarl-v8.fi-en.en europarl-v8.fi-en.fi"
        "wiki-titles.tgz titles.fi-en titles.fi-en"
    )
    # dev: newsdev2015 (one set, used for both directions); test: newstest2015 of the direction.
    # Each part lists the source file first, then the target file (newsdev2015 is swapped below).
    valid_part="dev-v2.tgz newsdev2015-enfi-src.en.sgm newsdev2015-enfi-ref.fi.sgm"
    valid_sacrebleu=
    if [[ $src == en ]]; then
        test_part="test.tgz newstest2015-enfi-src.en.sgm newstest2015-enfi-ref.fi.sgm"
    else
        test_part="test.tgz newstest2015-fien-src.fi.sgm newstest2015-fien-ref.en.sgm"
    fi
fi

downloads=$prep_dir/downloads
extract=$prep_dir/extract
raw=$prep_dir/raw
tok=$prep_dir/tok
bpe=$prep_dir/bpe
bin=$prep_dir/bin
manifest=$prep_dir/MANIFEST.sha256

# locate ARCHIVE FILE...: set the array `located` to the paths of the FILEs (in order), taken
# from --data-dir (the files themselves, or ARCHIVE) or from ARCHIVE, downloaded and verified.
locate() {
    local archive=$1 f p archive_path=
    shift
    located=()
    if [[ -n $data_dir ]]; then
        for f in "$@"; do
            p=$(find_one "$data_dir" "$f")
            if [[ -n $p ]]; then located+=("$p"); fi
        done
        if (( ${#located[@]} == $# )); then
            for p in "${located[@]}"; do verify_file "$p" "$manifest"; done
            return 0
        fi
        located=()
        archive_path=$(find_one "$data_dir" "$archive")
        [[ -n $archive_path ]] || die "$(printf '%s ' "$@")not found under --data-dir $data_dir, nor $archive." \
            "Put $archive ($(url_of "$archive")) or the files from it there."
    else
        fetch "$archive" "$downloads"
        archive_path=$downloads/$archive
    fi
    local dir=$extract/${archive%.tgz}
    if [[ ! -f $dir/.done ]]; then
        verify_file "$archive_path" "$manifest"
        rm -rf "$dir"
        mkdir -p "$dir"
        log "  extracting $* from $archive_path"
        tar -xzf "$archive_path" -C "$dir" --wildcards --no-anchored "$@" \
            || die "$archive_path does not hold $*: is it the WMT'15 $archive?"
        touch "$dir/.done"
    fi
    for f in "$@"; do
        p=$(find_one "$dir" "$f")
        [[ -n $p ]] || die "$f not found in $archive_path"
        located+=("$p")
    done
}

# same_lines A B: A and B have the same number of lines.
same_lines() {
    local a b
    a=$(wc -l <"$1")
    b=$(wc -l <"$2")
    [[ $a == "$b" ]] || die "$1 has $a lines but $2 has $b: not a parallel pair"
}

# ----------------------------------------------------------------------------------------------
if stage_enabled 0; then
    log "stage 0: data: WMT'15 $pair training corpora, dev and test sets"
    if [[ -f $prep_dir/.data.done ]]; then
        log "  done already ($prep_dir/.data.done), skipped"
    else
        mkdir -p "$raw"
        : >"$manifest"
        : >"$raw/train.en.part"
        : >"$raw/train.$x.part"
        for part in "${train_parts[@]}"; do
            read -r archive f_en f_x <<<"$part"
            if [[ $f_en == "$f_x" ]]; then
                # Wiki Headlines: one file, "finnish ||| english" per line
                locate "$archive" "$f_en"
                python "$RECIPES_DIR/utils/text_tools.py" titles "${located[0]}" "$raw/titles.$x" "$raw/titles.en"
                paths=("$raw/titles.en" "$raw/titles.$x")
            else
                locate "$archive" "$f_en" "$f_x"
                paths=("${located[@]}")
            fi
            same_lines "${paths[0]}" "${paths[1]}"
            log "  $archive: $(wc -l <"${paths[0]}") pairs"
            cat "${paths[0]}" >>"$raw/train.en.part"
            cat "${paths[1]}" >>"$raw/train.$x.part"
        done
        rm -f "$raw/titles.en" "$raw/titles.$x"
        mv "$raw/train.en.part" "$raw/train.en"
        mv "$raw/train.$x.part" "$raw/train.$x"
        # dev and test: SGML -> text exactly as sacrebleu does it; the files are in $src/$tgt
        # order (for fi-en the newsdev2015 source is its Finnish reference file)
        for split in valid test; do
            if [[ $split == valid ]]; then part=$valid_part; else part=$test_part; fi
            read -r archive f_a f_b <<<"$part"
            locate "$archive" "$f_a" "$f_b"
            paths=("${located[@]}")
            if [[ $split == valid && $src == "fi" ]]; then
                paths=("${paths[1]}" "${paths[0]}")
            fi
            python "$RECIPES_DIR/utils/text_tools.py" sgm "${paths[0]}" >"$raw/$split.$src"
            python "$RECIPES_DIR/utils/text_tools.py" sgm "${paths[1]}" >"$raw/$split.$tgt"
            same_lines "$raw/$split.$src" "$raw/$split.$tgt"
            log "  $split: $(wc -l <"$raw/$split.$src") sentences ($(basename "${paths[0]}"))"
        done
        # Cross-check the test references with sacrebleu's own copy when it can fetch it.
        if [[ -z $data_dir ]] && command -v sacrebleu >/dev/null 2>&1; then
            for check in "test wmt15" "valid $valid_sacrebleu"; do
                read -r split testset <<<"$check"
                [[ -n ${testset:-} ]] || continue
                if sacrebleu -t "$testset" -l "$pair" --echo ref >"$raw/$split.sacrebleu" 2>/dev/null; then
                    cmp -s "$raw/$split.sacrebleu" "$raw/$split.$tgt" \
                        || die "$raw/$split.$tgt differs from sacrebleu -t $testset -l $pair --echo ref"
                    log "  $split references identical to sacrebleu -t $testset -l $pair --echo ref"
                else
                    log "  (sacrebleu -t $testset could not fetch its copy: cross-check skipped)"
                fi
                rm -f "$raw/$split.sacrebleu"
            done
        fi
        touch "$prep_dir/.data.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 1; then
    log "stage 1: tokenize: sacremoses normalize + tokenize -a; clean the training pairs"
    if [[ -f $prep_dir/.tok.done ]]; then
        log "  done already ($prep_dir/.tok.done), skipped"
    else
        [[ -f $prep_dir/.data.done ]] || die "no raw data in $raw: run stage 0 first"
        require_tool sacremoses "Install it: pip install sacremoses (./setup_env.sh does)."
        mkdir -p "$tok"
        for split in train valid test; do
            for l in "$src" "$tgt"; do
                # Moses' punctuation normalization, then tokenization with aggressive hyphen
                # splitting and Moses' default XML escaping (as fairseq's
                # prepare-wmt14en2de.sh); the detokenizer in scoring undoes both.
                sacremoses -q -l "$l" -j "$nj" normalize tokenize -a \
                    <"$raw/$split.$l" >"$tok/$split.$l"
            done
            same_lines "$tok/$split.$src" "$tok/$split.$tgt"
        done
        python "$RECIPES_DIR/utils/text_tools.py" clean "$tok/train.$src" "$tok/train.$tgt" \
            "$tok/train.clean.$src" "$tok/train.clean.$tgt" --max-len "$max_len" --ratio "$len_ratio"
        touch "$prep_dir/.tok.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 2; then
    log "stage 2: bpe: joint BPE, about $dict_size symbols"
    if [[ -f $prep_dir/.bpe.done ]]; then
        log "  done already ($prep_dir/.bpe.done), skipped"
    else
        [[ -f $prep_dir/.tok.done ]] || die "no tokenized data in $tok: run stage 1 first"
        require_tool subword-nmt "Install it: pip install subword-nmt (./setup_env.sh does)."
        mkdir -p "$bpe"
        # --total-symbols: -s counts the characters too, so the joint vocabulary is ~dict_size
        subword-nmt learn-joint-bpe-and-vocab --input "$tok/train.clean.$src" "$tok/train.clean.$tgt" \
            -s "$bpe_merges" --total-symbols -o "$bpe/codes" \
            --write-vocabulary "$bpe/vocab.$src" "$bpe/vocab.$tgt" --num-workers "$nj"
        for split in train valid test; do
            in=$split
            if [[ $split == train ]]; then in=train.clean; fi
            for l in "$src" "$tgt"; do
                subword-nmt apply-bpe -c "$bpe/codes" --vocabulary "$bpe/vocab.$l" \
                    --vocabulary-threshold "$bpe_vocab_threshold" --num-workers "$nj" \
                    <"$tok/$in.$l" >"$bpe/$split.$l"
            done
        done
        touch "$prep_dir/.bpe.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 3; then
    log "stage 3: binarize: fairseq-preprocess, dictionaries of at most $dict_size"
    if [[ -f $prep_dir/.bin.done ]]; then
        log "  done already ($prep_dir/.bin.done), skipped"
    else
        [[ -f $prep_dir/.bpe.done ]] || die "no BPE data in $bpe: run stage 2 first"
        require_tool fairseq-preprocess "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
        rm -rf "$bin"
        fairseq-preprocess --source-lang "$src" --target-lang "$tgt" \
            --trainpref "$bpe/train" --validpref "$bpe/valid" --testpref "$bpe/test" \
            --nwordssrc "$dict_size" --nwordstgt "$dict_size" \
            --destdir "$bin" --workers "$nj" 2>&1 | tee "$prep_dir/preprocess.log" >&2
        log "  dictionaries: $src $(wc -l <"$bin/dict.$src.txt"), $tgt $(wc -l <"$bin/dict.$tgt.txt") (+4 special symbols)"
        touch "$prep_dir/.bin.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 4; then
    log "stage 4: train: $variants"
    [[ -f $prep_dir/.bin.done ]] || die "no binarized data in $bin: run stage 3 first"
    require_tool fairseq-train "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
    log_interval=100
    if (( smoke )); then log_interval=5; fi
    for v in $variants; do
        variant_criterion_flags "$v"
        log "  $v: ${variant_flags[*]}"
        run_train "$exp_dir/$v" "$bin" --user-dir "$USER_DIR" --arch "$arch" \
            "${train_flags[@]}" "${variant_flags[@]}" \
            --update-epoch-batch-itr True --required-batch-size-multiple 1 \
            --keep-last-epochs 2 --log-format json --log-interval "$log_interval" \
            --no-progress-bar "${device_flags[@]}" "${extra[@]}"
    done
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 5; then
    log "stage 5: decode: beams $beams on valid and test; detokenized sacreBLEU"
    require_tool fairseq-generate "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
    require_tool fairseq-skd-bleu "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    for v in $variants; do
        ckpt=$exp_dir/$v/checkpoint_best.pt
        [[ -f $ckpt ]] || die "$ckpt not found: run stage 4 (train) for $v first"
        for subset in valid test; do
            for beam in $beams; do
                gen=$exp_dir/$v/gen_${subset}_beam$beam.txt
                out=$exp_dir/$v/bleu_${subset}_beam$beam.json
                if [[ -f $out && $out -nt $ckpt ]]; then
                    log "  $out exists, skipped"
                    continue
                fi
                fairseq-generate "$bin" --user-dir "$USER_DIR" --path "$ckpt" \
                    --gen-subset "$subset" --beam "$beam" "${gen_flags[@]}" "${device_flags[@]}" \
                    >"$gen.part" 2>>"$exp_dir/$v/generate.log"
                mv "$gen.part" "$gen"
                # BPE removed, detokenized, scored against the raw (untokenized) references
                fairseq-skd-bleu --generate-output "$gen" --reference "$raw/$subset.$tgt" \
                    --bpe subword_nmt --detokenize-lang "$tgt" --json "$out.part" \
                    2>&1 | tee -a "$exp_dir/$v/bleu.log" >&2
                mv "$out.part" "$out"
            done
        done
    done
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 6; then
    log "stage 6: collect: fairseq-skd-collect $exp_dir"
    require_tool fairseq-skd-collect "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    if [[ -f $exp_dir/results.md && -z $(find "$exp_dir" \( -name '*.json' -o -name train.log \) \
            -newer "$exp_dir/results.md") ]]; then
        log "  $exp_dir/results.md is newer than every score file and log, skipped"
    else
        # the experiment's name selects the paper's numbers printed beside ours
        fairseq-skd-collect "$exp_dir" --experiment "wmt15_${src}_${tgt}" --task mt
        log "  wrote $exp_dir/results.md"
    fi
fi
log "mt recipe: done"
exit 0
}
