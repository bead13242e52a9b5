#!/usr/bin/env bash
# Translation with self-knowledge distillation: Table 3 and Fig. 4 of Hahn & Choi (2019), from
# the WMT'15 archives to detokenized sacreBLEU with beams 1 and 12 on the dev and test sets.
# Settings: recipes/conf/mt.sh; data sources and checksums: recipes/utils/checksums.tsv.
#
#   recipes/mt/run.sh --pair en-fi                     # all stages, the four variants
#   recipes/mt/run.sh --dataset synthetic-small --seeds "1 2 3"   # the offline study's MT (./run.sh)
#   recipes/mt/run.sh --pair en-de --variants "baseline skd" --stage 4 -- --fp16
#   recipes/mt/run.sh --pair en-fi --smoke --data-dir tests/fixtures/wmt15 --exp-dir /tmp/exp
# shellcheck source-path=SCRIPTDIR disable=SC2329  # the data stages run through data_stage
set -euo pipefail
# The whole script is one { ... } block: bash reads it completely before running it, so editing
# this file while a long training runs does not change (or break) the run.
{

# shellcheck source=../utils/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../utils/common.sh"

usage() {
    cat <<EOF
Usage: $0 (--pair SRC-TGT [--corpus DIR] | --dataset synthetic|synthetic-small) [options] [-- extra fairseq-train flags]

Stages:
  0  data: download (or take from --data-dir / --corpus) and verify the corpora, dev and test
     sets, or generate the synthetic corpus
  1  tokenize: sacremoses normalize + tokenize (-a); clean the training pairs (synthetic: as is)
  2  bpe: subword-nmt joint BPE (synthetic: none)
  3  binarize: fairseq-preprocess
  4  train: fairseq-train, one run per seed and variant (resumes from checkpoint_last.pt);
     before a Seq-KD variant (seqkd, seqkd_skd) its teacher translates the training set, in
     shards (recipes/utils/seqkd_data.sh; resumes a killed translation)
  5  decode: fairseq-generate with each of --beams on valid and test (synthetic: test);
     fairseq-skd-bleu (sacreBLEU); fairseq-skd-score-mt: teacher-forced NLL, prediction
     diagnostics and q_n on test, and NLL on a sample of the training set
  6  collect: fairseq-skd-collect EXP_DIR (results.md / results.csv / figures)

Options:
  --pair SRC-TGT          en-fi, fi-en or en-de: the paper's WMT'15 data; with --corpus any
                          two language codes (e.g. en-tr)
  --dataset synthetic     English-like sentences and their translations into a made-up
                          language with synonyms of its own (fairseq_skd/data/synthetic.py,
                          pair en-xx): 3000 pairs and a small model, which does not overfit them
  --dataset synthetic-small  1000 such pairs and a larger model, which overfits them: the
                          offline study's setting (./run.sh)
  --corpus DIR            your own parallel corpus: DIR/train.SRC train.TGT valid.SRC valid.TGT
                          test.SRC test.TGT, raw untokenized text, one sentence a line
  --bpe-size N            joint BPE merges and dictionary size (default: the paper's 10000 for
                          en-fi/fi-en, 30000 for en-de; 10000 for a corpus)
  --beams "LIST"          beam widths to decode with (default "1 12", the paper's)
$(common_usage)
EOF
}

pair=
dataset=
bpe_size=
beams="1 12"
stop_stage=6
task=mt  # the task as fairseq_skd/variants.py and fairseq-skd-collect name it
parse_recipe_options "$common_options pair dataset bpe_size beams" "$@"

case $dataset in
    "") ;;
    synthetic|synthetic-small)
        [[ -z $corpus && -z $data_dir ]] || die "--dataset $dataset is generated: it takes no --corpus or --data-dir"
        [[ -z $pair || $pair == en-xx ]] || die "--dataset $dataset is English to a made-up language: its pair is en-xx, not $pair"
        pair=en-xx ;;
    *) usage >&2; die "unknown --dataset '$dataset' (synthetic or synthetic-small; the paper's data: --pair en-fi|fi-en|en-de; your own: --corpus DIR)" ;;
esac
[[ -n $pair ]] || { usage >&2; die "--pair SRC-TGT is required (en-fi, fi-en, en-de; with --corpus any two language codes), or --dataset synthetic"; }
[[ $pair =~ ^[a-z]{2,3}-[a-z]{2,3}$ ]] || { usage >&2; die "unknown --pair '$pair': SRC-TGT with two language codes, e.g. en-fi"; }
src=${pair%-*}
tgt=${pair#*-}
[[ $src != "$tgt" ]] || die "--pair $pair: the source and target languages must differ"
if [[ $dataset == synthetic* ]]; then
    name=${name:-${dataset//-/_}_en_xx}
elif [[ -n $corpus ]]; then
    name=${name:-$(basename "$(cd "$corpus" && pwd)")}
    check_corpus_files "$corpus" "train.$src" "train.$tgt" "valid.$src" "valid.$tgt" "test.$src" "test.$tgt"
    for split in train valid test; do check_parallel "$corpus/$split.$src" "$corpus/$split.$tgt"; done
    check_language "$src" "--pair $pair"
    check_language "$tgt" "--pair $pair"
else
    case $pair in
        en-fi|fi-en|en-de) ;;
        *) usage >&2; die "unknown --pair '$pair' for the paper's data (en-fi, fi-en or en-de); your own corpus: --corpus DIR" ;;
    esac
    name=${name:-wmt15_${src}_${tgt}}
fi
[[ -z $bpe_size || $bpe_size =~ ^[1-9][0-9]*$ ]] || die "--bpe-size takes a number, not '$bpe_size'"
for beam in $beams; do [[ $beam =~ ^[1-9][0-9]*$ ]] || die "--beams takes beam widths >= 1, not '$beams'"; done
check_common_options
# shellcheck source=../conf/mt.sh
. "$RECIPES_DIR/conf/mt.sh"
check_variants
packages=()
if stage_enabled 1 && [[ $tokenizer == moses ]] || stage_enabled 5; then packages+=(sacremoses); fi
if stage_enabled 2 && [[ $bpe_method == subword_nmt ]]; then packages+=(subword_nmt); fi
if stage_enabled 5; then packages+=(sacrebleu); fi
if stage_enabled 6; then packages+=(matplotlib); fi
require_python_packages "${packages[@]}"
detect_device
log "mt recipe: pair=$pair ($name) model=$model variants='$variants' seeds='$seeds'" \
    "stages $stage..$stop_stage device=$device_name nproc=$nproc prep=$prep_dir exp=$exp_dir smoke=$smoke"

# ---- the WMT'15 data (http://www.statmt.org/wmt15/translation-task.html): for each part,
# "ARCHIVE FILE_en FILE_x" with FILE the name of a file inside ARCHIVE (x = fi or de). The
# archives' URLs and checksums are in recipes/utils/checksums.tsv.
if [[ -n $corpus || $dataset == synthetic* ]]; then
    :  # your own corpus or the synthetic one: no parts, no archives
elif [[ $src == de || $tgt == de ]]; then
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

if stage_enabled 4; then check_train_commands "$bin"; fi

# ----------------------------------------------------------------------------------------------
get_corpus() {
    mkdir -p "$raw"
    : >"$manifest"
    # your own files: no published checksum, their sha256 recorded for the record
    for split in train valid test; do
        for l in "$src" "$tgt"; do
            record_sha256 "$corpus/$split.$l" "$manifest"
            cp "$corpus/$split.$l" "$raw/$split.$l"
        done
        log "  $split: $(wc -l <"$raw/$split.$src") sentence pairs"
    done
}
get_wmt_data() {
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
        check_parallel "${paths[0]}" "${paths[1]}"
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
        check_parallel "$raw/$split.$src" "$raw/$split.$tgt"
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
}
get_synthetic() {
    mkdir -p "$raw"
    : >"$manifest"
    python3 "$USER_DIR/data/synthetic.py" "$raw" --parallel --tgt "$tgt" \
        --train "${synthetic_sizes[0]}" --valid "${synthetic_sizes[1]}" --test "${synthetic_sizes[2]}" --seed 1
    for split in train valid test; do
        for l in "$src" "$tgt"; do record_sha256 "$raw/$split.$l" "$manifest"; done
        log "  $split: $(wc -l <"$raw/$split.$src") sentence pairs"
    done
}
if [[ $dataset == synthetic* ]]; then
    data_stage 0 data "" "data: the $dataset en-xx corpus" get_synthetic
elif [[ -n $corpus ]]; then
    data_stage 0 data "" "data: $pair corpus $corpus" get_corpus
else
    data_stage 0 data "" "data: WMT'15 $pair training corpora, dev and test sets" get_wmt_data
fi

# ----------------------------------------------------------------------------------------------
tokenize() {
    mkdir -p "$tok"
    if [[ $tokenizer == none ]]; then  # text that is tokenized already, nothing to clean
        for split in train valid test; do
            for l in "$src" "$tgt"; do cp "$raw/$split.$l" "$tok/$split.$l"; done
        done
        for l in "$src" "$tgt"; do cp "$raw/train.$l" "$tok/train.clean.$l"; done
        return 0
    fi
    require_tool sacremoses "Install it: pip install sacremoses (./setup_env.sh does)."
    for split in train valid test; do
        for l in "$src" "$tgt"; do
            # Moses' punctuation normalization, then tokenization with aggressive hyphen
            # splitting and Moses' default XML escaping (as fairseq's
            # prepare-wmt14en2de.sh); the detokenizer in scoring undoes both.
            sacremoses -q -l "$l" -j "$nj" normalize tokenize -a \
                <"$raw/$split.$l" >"$tok/$split.$l"
        done
        check_parallel "$tok/$split.$src" "$tok/$split.$tgt"
    done
    python "$RECIPES_DIR/utils/text_tools.py" clean "$tok/train.$src" "$tok/train.$tgt" \
        "$tok/train.clean.$src" "$tok/train.clean.$tgt" --max-len "$max_len" --ratio "$len_ratio"
}
data_stage 1 tok "data" "tokenize: sacremoses normalize + tokenize -a; clean the training pairs" tokenize

# ----------------------------------------------------------------------------------------------
apply_bpe() {
    mkdir -p "$bpe"
    if [[ $bpe_method == none ]]; then  # whole words
        for split in train valid test; do
            in=$split
            if [[ $split == train ]]; then in=train.clean; fi
            for l in "$src" "$tgt"; do cp "$tok/$in.$l" "$bpe/$split.$l"; done
        done
        return 0
    fi
    require_tool subword-nmt "Install it: pip install subword-nmt (./setup_env.sh does)."
    # --total-symbols: -s counts the characters too, so the joint vocabulary is ~dict_size
    subword-nmt learn-joint-bpe-and-vocab --input "$tok/train.clean.$src" "$tok/train.clean.$tgt" \
        -s "$bpe_merges" --total-symbols -o "$bpe/codes" \
        --write-vocabulary "$bpe/vocab.$src" "$bpe/vocab.$tgt" --num-workers "$nj"
    local threshold=$bpe_vocab_threshold
    if [[ $threshold == auto ]]; then
        threshold=$(python3 "$RECIPES_DIR/utils/text_tools.py" bpe-threshold "$bpe/vocab.$src" "$bpe/vocab.$tgt")
    fi
    log "  apply-bpe --vocabulary-threshold $threshold ($bpe_vocab_threshold)"
    for split in train valid test; do
        in=$split
        if [[ $split == train ]]; then in=train.clean; fi
        for l in "$src" "$tgt"; do
            subword-nmt apply-bpe -c "$bpe/codes" --vocabulary "$bpe/vocab.$l" \
                --vocabulary-threshold "$threshold" --num-workers "$nj" \
                <"$tok/$in.$l" >"$bpe/$split.$l"
        done
    done
    local l per_word
    for l in "$src" "$tgt"; do
        per_word=$(python3 "$RECIPES_DIR/utils/text_tools.py" units-per-word "$tok/train.clean.$l" "$bpe/train.$l")
        log "  $l: $per_word subword units per word"
        if awk -v r="$per_word" 'BEGIN { exit !(r > 3) }'; then
            log "  WARNING: $l words became $per_word units each on average: the segmentation is" \
                "close to characters; a larger --bpe-size or more data keeps whole words"
        fi
    done
}
data_stage 2 bpe "tok" "bpe: joint BPE, about $dict_size symbols" apply_bpe

# ----------------------------------------------------------------------------------------------
binarize() {
    require_tool fairseq-preprocess "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
    rm -rf "$bin"
    # shellcheck disable=SC2094  # step appends the tool's stderr to the log, this its stdout
    step "$prep_dir/preprocess.log" "binarizing" fairseq-preprocess --source-lang "$src" \
        --target-lang "$tgt" --trainpref "$bpe/train" --validpref "$bpe/valid" \
        --testpref "$bpe/test" --nwordssrc "$dict_size" --nwordstgt "$dict_size" \
        --destdir "$bin" --workers "$nj" >>"$prep_dir/preprocess.log"
    local joint
    joint=$(cut -d ' ' -f 1 "$bin/dict.$src.txt" "$bin/dict.$tgt.txt" | sort -u | wc -l)
    log "  dictionaries: $src $(wc -l <"$bin/dict.$src.txt"), $tgt $(wc -l <"$bin/dict.$tgt.txt")," \
        "$joint units in all (+4 special symbols each); asked for about $dict_size"
    if [[ $bpe_method != none ]] && (( joint * 2 < dict_size )); then
        log "  WARNING: $joint units in all, less than half the $dict_size asked for (--bpe-size):" \
            "the corpus has too few distinct subwords for it; a smaller --bpe-size matches it"
    fi
}
data_stage 3 bin "bpe" "binarize: fairseq-preprocess, dictionaries of at most $dict_size" binarize

# ----------------------------------------------------------------------------------------------
train_stage 4 "$bin"

# ----------------------------------------------------------------------------------------------
if stage_enabled 5; then
    log "stage 5: decode: beams $beams on $score_subsets; detokenized sacreBLEU; test-set diagnostics and q_n; NLL on $train_sample training sentences"
    require_tool fairseq-generate "Run ./setup_env.sh (it creates .venv), or activate your fairseq environment."
    require_tool fairseq-skd-bleu "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    require_tool fairseq-skd-score-mt "Install this repository's package: ./setup_env.sh (or pip install -e .)."
    while read -r seed v; do
        ckpt=$(best_checkpoint "$seed" "$v" 4)
        run=$(run_dir "$seed" "$v")
        for subset in $score_subsets; do
            for beam in $beams; do
                gen=$run/gen_${subset}_beam$beam.txt
                out=$run/bleu_${subset}_beam$beam.json
                if up_to_date "$out" "$ckpt"; then continue; fi
                step "$run/generate.log" "translating $subset with $v, seed $seed, beam $beam" \
                    fairseq-generate "$bin" --user-dir "$USER_DIR" --path "$ckpt" \
                    --gen-subset "$subset" --beam "$beam" "${gen_flags[@]}" "${device_flags[@]}" \
                    >"$gen.part"
                mv "$gen.part" "$gen"
                # BPE removed, detokenized, scored against the raw (untokenized) references
                step "$run/bleu.log" "scoring $gen" fairseq-skd-bleu --generate-output "$gen" \
                    --reference "$raw/$subset.$tgt" --bpe "$bpe_method" --detokenize-lang "$detokenize" \
                    --json "$out.part" | sed -n "1s/^/  $v, seed $seed: $subset beam $beam: /p" >&2
                mv "$out.part" "$out"
            done
        done
        # teacher-forced on the references: NLL, calibration, the reliability table that
        # fairseq-skd-collect tables and draws (temperature fitted on valid), and q_n at the
        # same sigma for every variant
        score_subset fairseq-skd-score-mt "$bin" "$ckpt" "$run" "$v, seed $seed" test \
            --qn-sigma "$qn_sigma"
        score_train_sample fairseq-skd-score-mt "$bin" "$ckpt" "$run" "$v, seed $seed"
    done < <(runs)
fi

# ----------------------------------------------------------------------------------------------
if stage_enabled 6; then collect_stage 6; fi
log "mt recipe: done"
exit 0
}
