# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with the sourcing recipe
# Settings of recipes/lm/run.sh (Table 2 of Hahn & Choi 2019), sourced after the options are
# parsed ($dataset is ptb or wiki2, $smoke is 0 or 1). Each value is marked:
#   PAPER  taken from the paper (Section 4.1-4.2);
#   OURS   the paper does not give it: our choice, with the reason.
# Change them here (or pass fairseq flags after `--`, which come last and win).

# ---- model: PAPER "a single LSTM layer and single feed forward layer with ReLU", word
# dimension 500, 400 hidden units: the skd_lstm_lm preset (fairseq_skd/models/skd_lstm_lm.py).
arch=skd_lstm_lm

# ---- SKD: PAPER sigma = 0.1 for both; eta = 0.0002 (PTB) / 0.00011 (Wiki-2); SKD starts after
# K = 500 (PTB) / 900 (Wiki-2) batches.
skd_sigma=0.1
case $dataset in
    ptb)   skd_warmup=500; skd_eta=0.0002 ;;
    wiki2) skd_warmup=900; skd_eta=0.00011 ;;
esac

# ---- +Noise: OURS. The paper adds Gaussian noise to the target-side (decoder input) word
# embeddings but gives no standard deviation. 0.1 is the bound of the uniform(-0.1, 0.1) init
# of those embeddings (RMS 0.058), so the noise is of the order of the embeddings at the start
# and shrinks relative to them as they grow; the same value as the repository's demo.
noise_std=0.1

# ---- what a Wiki-2 "sentence" is: OURS, see recipes/README.md. The paper only "added an <EOS>
# to every sentence"; WikiText lines are paragraphs (~88 tokens), and the paper's Wiki-2 NLL of
# ~119 nats per sentence only fits sentences of ~25 tokens (at a perplexity of ~120), so we split
# lines after sentence-final ". ? !" tokens. `--wiki2-unit line` keeps one line = one sentence.
wiki2_unit=${wiki2_unit:-sentence}

# ---- training: OURS (the paper gives none of these).
train_flags=(
    --task language_modeling
    --sample-break-mode eos        # one sentence per sample, as the per-sentence NLL metric
    --tokens-per-sample 1024       # the longest sentence fairseq accepts (fairseq's default)
    # 20 sentences per update: Zaremba et al. (2014)'s PTB batch. K and eta count updates, so
    # the batch fixes what they mean: with 20 sentences alpha reaches 1 about 2.4 epochs
    # (PTB) / 2 epochs (Wiki-2, split into sentences) after K, the same for both datasets,
    # which is what the paper's smaller eta for the larger Wiki-2 suggests.
    --batch-size 20
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 0.001   # Adam's default step size
    --clip-norm 1.0                                           # guards against LSTM gradient spikes
    # halve the step size when the validation loss stops improving (as the demo)
    --lr-scheduler reduce_lr_on_plateau --lr-shrink 0.5 --lr-patience 0
    --dropout 0.5                  # Zaremba's medium PTB LSTM; a 500/400 LSTM overfits PTB fast
    --max-epoch 40 --patience 5    # stop after 5 epochs without a better validation loss
    --seed 1
)

if (( smoke )); then
    # The smoke test: a tiny model, 2 epochs on the fixtures (~20 updates per epoch), SKD
    # starting after 10 updates and alpha growing to 0.3; checks the plumbing, not the method.
    arch=skd_lstm_lm_tiny
    skd_warmup=10
    skd_eta=0.01
    train_flags+=(--max-epoch 2 --dropout 0.0)
fi
