#!/usr/bin/env bash
# The main job: sets up the environment if needed (./setup_env.sh), then the offline SKD study:
# the language-model and translation recipes on their synthetic dataset (generated offline in a
# second; synthetic-small, a setting the baseline overfits), trained to convergence, the paper's
# four variants, three seeds, tables over the seeds and figures.
#
#   ./run.sh                          # both tasks, seeds 1 2 3, into outputs/study/
#   ./run.sh --compare                # SKD against label smoothing, R-Drop and distillation
#   ./run.sh --task lm --seeds 1      # one task, one seed
#   ./run.sh --variants all           # the rows beyond the paper too (fairseq_skd/variants.py)
#   ./run.sh --dataset synthetic      # the larger corpus the models do not overfit
#   ./run.sh --smoke                  # tiny sizes: the plumbing in a few minutes
#
# --task lm|mt|both, --dataset, --compare and --out DIR are this script's; every other option
# (and everything after --) goes to both recipes: recipes/lm/run.sh --help, recipes/mt/run.sh --help.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

task=both
dataset=synthetic-small
out=
seeds="1 2 3"
args=()
while (( $# )); do
    case $1 in
        --task) [[ $# -ge 2 ]] || { echo "run.sh: --task needs a value (lm, mt or both)" >&2; exit 1; }
                task=$2; shift 2 ;;
        --out) [[ $# -ge 2 ]] || { echo "run.sh: --out needs a folder" >&2; exit 1; }
               out=$2; shift 2 ;;
        --seeds) [[ $# -ge 2 ]] || { echo "run.sh: --seeds needs a list, e.g. \"1 2 3\"" >&2; exit 1; }
                 seeds=$2; shift 2 ;;
        --dataset) [[ $# -ge 2 ]] || { echo "run.sh: --dataset needs a value (synthetic-small or synthetic)" >&2; exit 1; }
                   dataset=$2; shift 2 ;;
        --compare) args+=(--variants compare); shift ;;
        -h|--help) usage; exit 0 ;;
        --) args+=("$@"); break ;;
        *) args+=("$1"); shift ;;
    esac
done
case $dataset in
    synthetic-small) out=${out:-outputs/study} ;;
    synthetic) out=${out:-outputs/study-synthetic} ;;
    *) echo "run.sh: --dataset is synthetic-small (the default) or synthetic, not '$dataset'" >&2; exit 1 ;;
esac
case $task in
    lm) tasks=(lm) ;;
    mt) tasks=(mt) ;;
    both) tasks=(lm mt) ;;
    *) echo "run.sh: --task is lm, mt or both, not '$task'" >&2; exit 1 ;;
esac
existing=$out
while [[ ! -e $existing && $existing != "$(dirname "$existing")" ]]; do existing=$(dirname "$existing"); done
if [[ -e $existing && ! -d $existing ]]; then
    echo "run.sh: --out $out: $existing is a file, not a folder" >&2
    exit 1
fi
# one dataset a folder: the recipes would take another dataset's prepared data for their own
if [[ -f $out/DATASET && $(cat "$out/DATASET") != "$dataset" ]]; then
    echo "run.sh: --out $out holds the study of --dataset $(cat "$out/DATASET"), not $dataset: give another --out" >&2
    exit 1
fi
mkdir -p "$out"
echo "$dataset" >"$out/DATASET"

"$repo/setup_env.sh"
for t in "${tasks[@]}"; do
    "$repo/recipes/$t/run.sh" --dataset "$dataset" --seeds "$seeds" --exp-dir "$out/$t" \
        --prep-dir "$out/data/$t" "${args[@]}"
done

echo
echo "The study's output is in $(cd "$out" && pwd)/:"
for t in "${tasks[@]}"; do
    echo "  $t/results.md, $t/results.csv   the tables above (mean ± std over the seeds), every run's row"
    echo "  $t/reliability.png              the test set's reliability diagram, the seeds pooled"
    echo "  $t/seed<N>/                     that seed's tables (results.md, .csv) and figures (*.png)"
    echo "  $t/seed<N>/<variant>/           fairseq's full log (train.log), checkpoints, score files"
    echo "  $t/commands.sh                  every command as it was run, to re-run any step by hand"
done
echo "  data/<task>/                     the generated corpora and their binarized form"
