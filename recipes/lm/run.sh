#!/usr/bin/env bash
# Language modelling with self-knowledge distillation: Table 2 of Hahn & Choi (2019), from the
# raw PTB / WikiText-2 files to the per-sentence NLL table. Settings: recipes/conf/lm.sh.
#
#   recipes/lm/run.sh --dataset ptb                    # all stages, the four variants
#   recipes/lm/run.sh --dataset wiki2 --variants "baseline skd" --stage 3 -- --fp16
#   recipes/lm/run.sh --dataset ptb --smoke --data-dir tests/fixtures/ptb --exp-dir /tmp/exp
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# The whole script is one { ... } block: bash reads it completely before running it, so editing
# this file while a long training runs does not change (or break) the run.
{

# shellcheck source=../utils/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../utils/common.sh"

usage() {
    cat <<EOF
Usage: $0 --dataset ptb|wiki2 [options] [-- extra fairseq-train flags]

Stages:
  0  data: download (or take from --data-dir) and verify the raw files
  1  text: one sentence per line (PTB as is; WikiText-2 split into sentences)
  2  binarize: fairseq-preprocess --only-source
  3  train: fairseq-train, one run per variant (resumes from checkpoint_last.pt)
  4  score: fairseq-skd-score-lm, per-sentence NLL and perplexity on valid and test
  5  collect: fairseq-skd-collect EXP_DIR (results.md / results.csv / figures)

Options:
  --dataset ptb|wiki2     which corpus (required)
  --stage N               first stage to run (default 0)
  --stop-stage M          last stage to run (default 5)
  --variants "LIST"       subset of: baseline noise skd noise_skd (default: all four)
  --data-dir DIR          take the raw files from DIR instead of downloading them:
                            ptb:   ptb.train.txt ptb.valid.txt ptb.test.txt (simple-examples/data)
                            wiki2: wikitext-2-v1.zip, or wiki.{train,valid,test}.tokens
                          (searched recursively under DIR)
  --prep-dir DIR          where prepared data goes (default data/DATASET)
  --exp-dir DIR           where runs and results go (default exp/DATASET)
  --wiki2-unit U          sentence (default) or line: what one WikiText-2 sample is
  --nj N                  parallel jobs for data preparation (default: number of cores)
  --nproc N               data-parallel training workers (default 1): N GPUs, or on CPU N
                          workers sharing the cores (fairseq-skd-train --nproc)
  --cpu                   train on CPU even when a GPU is available
  --smoke                 tiny model and 2 epochs on local files (needs --data-dir): a test
  -h, --help              this message
Everything after '--' is appended to fairseq-train (e.g. -- --fp16).
EOF
}

dataset=
stage=0
stop_stage=5
variants="baseline noise skd noise_skd"
data_dir=
prep_dir=
exp_dir=
wiki2_unit=sentence
nj=$(nproc 2>/dev/null || echo 1)
nproc=1
force_cpu=0
smoke=0
extra=()

while (( $# )); do
    case $1 in
        --dataset) dataset=${2:?--dataset needs a value}; shift 2 ;;
        --stage) stage=${2:?--stage needs a value}; shift 2 ;;
        --stop-stage) stop_stage=${2:?--stop-stage needs a value}; shift 2 ;;
        --variants) variants=${2?--variants needs a value}; shift 2 ;;
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --prep-dir) prep_dir=${2:?--prep-dir needs a value}; shift 2 ;;
        --exp-dir) exp_dir=${2:?--exp-dir needs a value}; shift 2 ;;
        --wiki2-unit) wiki2_unit=${2:?--wiki2-unit needs a value}; shift 2 ;;
        --nj) nj=${2:?--nj needs a value}; shift 2 ;;
        --nproc) nproc=${2:?--nproc needs a value}; shift 2 ;;
        --cpu) force_cpu=1; shift ;;
        --smoke) smoke=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

case $dataset in
    ptb|wiki2) ;;
    "") usage >&2; die "--dataset is required (ptb or wiki2)" ;;
    *) usage >&2; die "unknown --dataset '$dataset' (ptb or wiki2)" ;;
esac
[[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || die "--stage and --stop-stage take numbers"
[[ $nproc =~ ^[1-9][0-9]*$ ]] || die "--nproc takes a number of workers >= 1, not '$nproc'"
[[ $wiki2_unit == sentence || $wiki2_unit == line ]] || die "--wiki2-unit is sentence or line, not '$wiki2_unit'"
if (( smoke )) && [[ -z $data_dir ]]; then
    die "--smoke runs offline on local files: pass --data-dir (e.g. tests/fixtures/ptb)"
fi
if [[ -n $data_dir && ! -d $data_dir ]]; then
    die "--data-dir $data_dir is not a folder"
fi

name=$dataset
if [[ $dataset == wiki2 && $wiki2_unit == line ]]; then name=wiki2_line; fi
prep_dir=${prep_dir:-data/$name}
exp_dir=${exp_dir:-exp/$name}
use_repo_venv
# shellcheck source=../conf/lm.sh
. "$RECIPES_DIR/conf/lm.sh"
check_variants
detect_device "$force_cpu"
log "lm recipe: dataset=$dataset variants='$variants' stages $stage..$stop_stage device=$device_name nproc=$nproc" \
    "prep=$prep_dir exp=$exp_dir smoke=$smoke"

raw=$prep_dir/raw
text=$prep_dir/text
bin=$prep_dir/bin
manifest=$prep_dir/MANIFEST.sha256

# ----------------------------------------------------------------------------------------------
if stage_enabled 0; then
    log "stage 0: data: obtain and verify the raw $dataset files"
    if [[ -f $prep_dir/.data.done ]]; then
        log "  done already ($prep_dir/.data.done), skipped"
    else
        mkdir -p "$raw"
        : >"$manifest"
        if [[ $dataset == ptb ]]; then
            for f in ptb.train.txt ptb.valid.txt ptb.test.txt; do
                if [[ -n $data_dir ]]; then
                    src=$(find_one "$data_dir" "$f")
                    [[ -n $src ]] || die "$f not found under --data-dir $data_dir. It is in data/ of" \
                        "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz, or at $(url_of "$f")"
                else
                    fetch "$f" "$prep_dir/downloads"
                    src=$prep_dir/downloads/$f
                fi
                verify_file "$src" "$manifest"
                cp "$src" "$raw/$f"
            done
        else
            files=(wiki.train.tokens wiki.valid.tokens wiki.test.tokens)
            zip=
            if [[ -n $data_dir ]]; then
                zip=$(find_one "$data_dir" wikitext-2-v1.zip)
                if [[ -z $zip ]]; then
                    for f in "${files[@]}"; do
                        src=$(find_one "$data_dir" "$f")
                        [[ -n $src ]] || die "$f not found under --data-dir $data_dir (nor wikitext-2-v1.zip)." \
                            "Get $(url_of wikitext-2-v1.zip) (or its mirror https://wikitext.smerity.com/wikitext-2-v1.zip)"
                        verify_file "$src" "$manifest"
                        cp "$src" "$raw/$f"
                    done
                fi
            else
                fetch wikitext-2-v1.zip "$prep_dir/downloads"
                zip=$prep_dir/downloads/wikitext-2-v1.zip
            fi
            if [[ -n $zip ]]; then
                verify_file "$zip" "$manifest"
                rm -rf "$prep_dir/unzip"
                python -m zipfile -e "$zip" "$prep_dir/unzip"
                for f in "${files[@]}"; do
                    src=$(find_one "$prep_dir/unzip" "$f")
                    [[ -n $src ]] || die "$zip has no $f: is it wikitext-2-v1.zip (the tokenized version)?"
                    cp "$src" "$raw/$f"
                done
                rm -rf "$prep_dir/unzip"
            fi
        fi
        touch "$prep_dir/.data.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 1; then
    log "stage 1: text: one sentence per line"
    if [[ -f $prep_dir/.text.done ]]; then
        log "  done already ($prep_dir/.text.done), skipped"
    else
        [[ -f $prep_dir/.data.done ]] || die "no raw data in $raw: run stage 0 first"
        mkdir -p "$text"
        for split in train valid test; do
            if [[ $dataset == ptb ]]; then
                # PAPER: "We did not apply additional pre-processing for the PTB dataset."
                # fairseq adds </s> after every line, Mikolov's <eos>.
                cp "$raw/ptb.$split.txt" "$text/$split.txt"
            else
                python "$RECIPES_DIR/utils/text_tools.py" wikitext-sentences \
                    "$raw/wiki.$split.tokens" "$text/$split.txt" --unit "$wiki2_unit"
            fi
            log "  $split: $(wc -l <"$text/$split.txt") sentences, $(wc -w <"$text/$split.txt") words"
        done
        touch "$prep_dir/.text.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 2; then
    log "stage 2: binarize: fairseq-preprocess"
    if [[ -f $prep_dir/.bin.done ]]; then
        log "  done already ($prep_dir/.bin.done), skipped"
    else
        [[ -f $prep_dir/.text.done ]] || die "no text in $text: run stage 1 first"
        require_tool fairseq-preprocess "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
        rm -rf "$bin"
        # The vocabulary is every word of the training text (PTB: 10K; WikiText-2: 33K, both
        # with <unk> already in the text), as in the paper.
        fairseq-preprocess --only-source --task language_modeling \
            --trainpref "$text/train.txt" --validpref "$text/valid.txt" --testpref "$text/test.txt" \
            --destdir "$bin" --workers "$nj" 2>&1 | tee "$prep_dir/preprocess.log" >&2
        log "  dictionary: $(wc -l <"$bin/dict.txt") words (+4 special symbols)"
        touch "$prep_dir/.bin.done"
    fi
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 3; then
    log "stage 3: train: $variants"
    [[ -f $prep_dir/.bin.done ]] || die "no binarized data in $bin: run stage 2 first"
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
if stage_enabled 4; then
    log "stage 4: score: per-sentence NLL on valid and test"
    require_tool fairseq-skd-score-lm "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    for v in $variants; do
        ckpt=$exp_dir/$v/checkpoint_best.pt
        [[ -f $ckpt ]] || die "$ckpt not found: run stage 3 (train) for $v first"
        for subset in valid test; do
            out=$exp_dir/$v/score_$subset.json
            if [[ -f $out && $out -nt $ckpt ]]; then
                log "  $out exists, skipped"
                continue
            fi
            fairseq-skd-score-lm "$bin" --path "$ckpt" --subset "$subset" \
                --output "$exp_dir/$v/score_$subset.tsv" --json "$out.part" "${device_flags[@]}" \
                2>&1 | tee -a "$exp_dir/$v/score.log" >&2
            mv "$out.part" "$out"
        done
    done
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 5; then
    log "stage 5: collect: fairseq-skd-collect $exp_dir"
    require_tool fairseq-skd-collect "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    if [[ -f $exp_dir/results.md && -z $(find "$exp_dir" \( -name '*.json' -o -name train.log \) \
            -newer "$exp_dir/results.md") ]]; then
        log "  $exp_dir/results.md is newer than every score file and log, skipped"
    else
        # the experiment's name selects the paper's numbers printed beside ours
        fairseq-skd-collect "$exp_dir" --experiment "$dataset" --task lm
        log "  wrote $exp_dir/results.md"
    fi
fi
log "lm recipe: done"
exit 0
}
