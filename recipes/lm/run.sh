#!/usr/bin/env bash
# Language modelling with self-knowledge distillation: Table 2 of Hahn & Choi (2019), from the
# raw PTB / WikiText-2 files (or your own corpus) to the per-sentence NLL table.
# Settings: recipes/conf/lm.sh. What is shared with the MT recipe: recipes/utils/common.sh.
#
#   recipes/lm/run.sh --dataset ptb                    # all stages, the four variants
#   recipes/lm/run.sh --dataset synthetic-small --seeds "1 2 3"   # the offline study's LM (./run.sh)
#   recipes/lm/run.sh --dataset wiki2 --variants "baseline skd" --stage 3 -- --fp16
#   recipes/lm/run.sh --corpus my_text/ --model transformer --skd-args "--skd-sigma auto"
#   recipes/lm/run.sh --dataset ptb --smoke --data-dir tests/fixtures/ptb --exp-dir /tmp/exp
# shellcheck source-path=SCRIPTDIR disable=SC2329  # the data stages run through data_stage
set -euo pipefail
# The whole script is one { ... } block: bash reads it completely before running it, so editing
# this file while a long training runs does not change (or break) the run.
{

# shellcheck source=../utils/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../utils/common.sh"

usage() {
    cat <<EOF
Usage: $0 (--dataset ptb|wiki2|synthetic|synthetic-small | --corpus DIR) [options] [-- extra fairseq-train flags]

Stages:
  0  data: download (or take from --data-dir / --corpus) and verify the raw files, or
     generate the synthetic corpus
  1  text: one sentence per line (PTB as is; WikiText-2 split into sentences; a corpus as is
     or Moses-tokenized)
  2  binarize: fairseq-preprocess --only-source
  3  train: fairseq-train, one run per seed and variant (resumes from checkpoint_last.pt)
  4  score: fairseq-skd-score-lm, per-sentence NLL, perplexity, diagnostics and q_n on valid
     and test (synthetic: test), and NLL on a sample of the training set
  5  collect: fairseq-skd-collect EXP_DIR (results.md / results.csv / figures)

Options:
  --dataset ptb|wiki2     the paper's corpora
  --dataset synthetic     English-like sentences with near-synonyms, generated offline in a
                          second (fairseq_skd/data/synthetic.py): 6000 of them and a small
                          model, which does not overfit them
  --dataset synthetic-small  600 such sentences and a larger model, which overfits them: the
                          offline study's setting (./run.sh)
  --corpus DIR            your own corpus instead: DIR/train.txt, valid.txt, test.txt, raw text,
                          one sentence per line
  --tokenize none|moses   --corpus only: the text as it is (default, as PTB) or Moses-tokenized
  --lang CODE             --corpus only: the language for --tokenize moses (default en)
  --vocab-size N          --corpus only: keep the N most frequent training words, the rarer
                          become <unk> (default: every word of train)
  --wiki2-unit U          sentence (default) or line: what one WikiText-2 sample is
$(common_usage)
EOF
}

dataset=
tokenize=none
lang=en
vocab_size=
wiki2_unit=sentence
stop_stage=5
task=lm  # the task as fairseq_skd/variants.py and fairseq-skd-collect name it
parse_recipe_options "$common_options dataset tokenize lang vocab_size wiki2_unit" "$@"

if [[ -n $corpus ]]; then
    [[ -z $dataset ]] || die "--dataset and --corpus exclude each other: give one of them"
    dataset=corpus
    name=${name:-$(basename "$(cd "$corpus" && pwd)")}
    check_corpus_files "$corpus" train.txt valid.txt test.txt
    [[ $tokenize == none || $tokenize == moses ]] || die "--tokenize is none or moses, not '$tokenize'"
    [[ -z $vocab_size || $vocab_size =~ ^[1-9][0-9]*$ ]] || die "--vocab-size takes a number of words, not '$vocab_size'"
    if [[ $tokenize == moses ]]; then check_language "$lang" "--lang"; fi
else
    case $dataset in
        ptb|wiki2|synthetic|synthetic-small) ;;
        "") usage >&2; die "--dataset (ptb, wiki2, synthetic or synthetic-small) or --corpus DIR is required" ;;
        *) usage >&2; die "unknown --dataset '$dataset' (ptb, wiki2, synthetic or synthetic-small; your own text: --corpus DIR)" ;;
    esac
    [[ $tokenize == none && -z $vocab_size ]] || die "--tokenize and --vocab-size are for --corpus: the paper's corpora are used as published"
    name=${name:-${dataset//-/_}}
    if [[ $dataset == wiki2 && $wiki2_unit == line && $name == wiki2 ]]; then name=wiki2_line; fi
fi
[[ $wiki2_unit == sentence || $wiki2_unit == line ]] || die "--wiki2-unit is sentence or line, not '$wiki2_unit'"
check_common_options
# shellcheck source=../conf/lm.sh
. "$RECIPES_DIR/conf/lm.sh"
check_variants
packages=()
if stage_enabled 1 && [[ $tokenize == moses ]]; then packages+=(sacremoses); fi
if stage_enabled 5; then packages+=(matplotlib); fi
require_python_packages "${packages[@]}"
detect_device
log "lm recipe: $dataset ($name) model=$model variants='$variants' seeds='$seeds'" \
    "stages $stage..$stop_stage device=$device_name nproc=$nproc prep=$prep_dir exp=$exp_dir smoke=$smoke"

raw=$prep_dir/raw
text=$prep_dir/text
bin=$prep_dir/bin
manifest=$prep_dir/MANIFEST.sha256
if stage_enabled 3; then check_train_commands "$bin"; fi

# ----------------------------------------------------------------------------------------------
get_data() {
    mkdir -p "$raw"
    : >"$manifest"
    if [[ $dataset == synthetic* ]]; then
        python3 "$USER_DIR/data/synthetic.py" "$raw" --train "${synthetic_sizes[0]}" \
            --valid "${synthetic_sizes[1]}" --test "${synthetic_sizes[2]}" --seed 1
        for f in train.txt valid.txt test.txt; do record_sha256 "$raw/$f" "$manifest"; done
    elif [[ $dataset == corpus ]]; then
        # your own files: no published checksum, their sha256 recorded for the record
        for f in train.txt valid.txt test.txt; do
            record_sha256 "$corpus/$f" "$manifest"
            cp "$corpus/$f" "$raw/$f"
        done
    elif [[ $dataset == ptb ]]; then
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
}
data_stage 0 data "" "data: obtain and verify the raw $dataset files" get_data

# ----------------------------------------------------------------------------------------------
make_text() {
    mkdir -p "$text"
    for split in train valid test; do
        case $dataset in
            # PAPER: "We did not apply additional pre-processing for the PTB dataset."
            # fairseq adds </s> after every line, Mikolov's <eos>.
            ptb) cp "$raw/ptb.$split.txt" "$text/$split.txt" ;;
            synthetic*) cp "$raw/$split.txt" "$text/$split.txt" ;;
            wiki2) python "$RECIPES_DIR/utils/text_tools.py" wikitext-sentences \
                       "$raw/wiki.$split.tokens" "$text/$split.txt" --unit "$wiki2_unit" ;;
            corpus)
                if [[ $tokenize == moses ]]; then
                    require_tool sacremoses "Install it: pip install sacremoses (./setup_env.sh does)."
                    sacremoses -q -l "$lang" -j "$nj" normalize tokenize -a \
                        <"$raw/$split.txt" >"$text/$split.txt"
                else
                    cp "$raw/$split.txt" "$text/$split.txt"
                fi ;;
        esac
        log "  $split: $(wc -l <"$text/$split.txt") sentences, $(wc -w <"$text/$split.txt") words"
    done
}
data_stage 1 text "data" "text: one sentence per line" make_text

# ----------------------------------------------------------------------------------------------
binarize() {
    require_tool fairseq-preprocess "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
    rm -rf "$bin"
    # The vocabulary is every word of the training text (PTB: 10K; WikiText-2: 33K, both
    # with <unk> already in the text), as in the paper; --vocab-size keeps the most frequent.
    nwords=()
    # fairseq's count includes its 4 special symbols (<s> <pad> </s> <unk>)
    if [[ -n $vocab_size ]]; then nwords=(--nwordssrc "$((vocab_size + 4))"); fi
    # shellcheck disable=SC2094  # step appends the tool's stderr to the log, this its stdout
    step "$prep_dir/preprocess.log" "binarizing" fairseq-preprocess --only-source \
        --task language_modeling "${nwords[@]}" --trainpref "$text/train.txt" \
        --validpref "$text/valid.txt" --testpref "$text/test.txt" --destdir "$bin" \
        --workers "$nj" >>"$prep_dir/preprocess.log"
    log "  dictionary: $(wc -l <"$bin/dict.txt") words (+4 special symbols)"
}
data_stage 2 bin "text" "binarize: fairseq-preprocess" binarize

# ----------------------------------------------------------------------------------------------
train_stage 3 "$bin"

# ----------------------------------------------------------------------------------------------
if stage_enabled 4; then
    log "stage 4: score: per-sentence NLL, diagnostics and q_n on $score_subsets; NLL on $train_sample training sentences"
    require_tool fairseq-skd-score-lm "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    while read -r seed v; do
        ckpt=$(best_checkpoint "$seed" "$v" 3)
        run=$(run_dir "$seed" "$v")
        for subset in $score_subsets; do
            # the same sigma for every variant: q_n then compares the models' embeddings
            score_subset fairseq-skd-score-lm "$bin" "$ckpt" "$run" "$v, seed $seed" "$subset" \
                --qn-sigma "$qn_sigma" --output "$run/score_$subset.tsv"
        done
        score_train_sample fairseq-skd-score-lm "$bin" "$ckpt" "$run" "$v, seed $seed"
    done < <(runs)
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 5; then collect_stage 5; fi
log "lm recipe: done"
exit 0
}
