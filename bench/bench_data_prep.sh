#!/usr/bin/env bash
# Time and peak memory of each data-preparation stage of recipes/mt/run.sh on a large parallel
# corpus of one's own (--corpus): normalize + tokenize + clean, joint BPE, binarize.
#
#   bench/bench_data_prep.sh                      # 1,000,000 training pairs in /tmp/skd_data_prep
#   bench/bench_data_prep.sh 100000 /tmp/small    # PAIRS WORK_DIR
#
# The corpus is the offline study's synthetic English -> made-up-language text
# (fairseq_skd/data/synthetic.py, written a line at a time), its target files named .de so that
# the recipe has an ISO code (sacremoses then applies its German rules to them). Each stage runs
# on its own under GNU time: wall-clock seconds and the peak resident memory of the largest
# process of the stage (GNU time's %M, in KB). --nj is the number of cores.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pairs=${1:-1000000}
work=${2:-/tmp/skd_data_prep}
python=${SKD_VENV:-$repo/.venv}/bin/python
nj=$(nproc)
[[ -x /usr/bin/time ]] || { echo "bench_data_prep.sh: needs GNU time (/usr/bin/time)" >&2; exit 1; }

mkdir -p "$work"
corpus=$work/corpus
if [[ ! -f $corpus/.done ]]; then
    echo "writing $pairs training pairs (+ 3000 valid, 3000 test) to $corpus" >&2
    /usr/bin/time -f "generate: %e s, peak %M KB" "$python" -m fairseq_skd.data.synthetic "$corpus" \
        --parallel --tgt de --train "$pairs" --valid 3000 --test 3000 --seed 1
    touch "$corpus/.done"
fi
echo "| stage | what | wall (s) | peak memory (MB) |"
echo "|---|---|---:|---:|"
names=(data "tokenize and clean" "joint BPE" binarize)
for stage in 0 1 2 3; do
    report=$(mktemp)
    /usr/bin/time -o "$report" -f "%e %M" bash "$repo/recipes/mt/run.sh" --pair en-de \
        --corpus "$corpus" --prep-dir "$work/data" --exp-dir "$work/exp" --nj "$nj" \
        --stage "$stage" --stop-stage "$stage" >"$work/stage$stage.log" 2>&1 \
        || { echo "stage $stage failed: see $work/stage$stage.log" >&2; exit 1; }
    read -r seconds kb <"$report"
    rm -f "$report"
    echo "| $stage | ${names[$stage]} | $seconds | $((kb / 1024)) |"
done
echo
echo "$pairs pairs, $nj cores ($(uname -m)); corpus $(du -sh "$corpus" | cut -f1), prepared $(du -sh "$work/data" | cut -f1)"
