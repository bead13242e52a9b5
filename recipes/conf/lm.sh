# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with the sourcing recipe
# Settings of recipes/lm/run.sh (Table 2 of Hahn & Choi 2019), sourced after the options are
# parsed ($dataset is ptb, wiki2, synthetic, synthetic-small or corpus; $model lstm or
# transformer; $smoke 0 or 1). Each value is marked:
#   PAPER  taken from the paper (Section 4.1-4.2);
#   OURS   the paper does not give it: our choice, with the reason.
# Change them here (or pass fairseq flags after `--`, which come last and win).

# ---- model: PAPER "a single LSTM layer and single feed forward layer with ReLU", word
# dimension 500, 400 hidden units: the skd_lstm_lm preset (fairseq_skd/models/skd_lstm_lm.py).
arch=skd_lstm_lm

# ---- SKD: PAPER sigma = 0.1 for both; eta = 0.0002 (PTB) / 0.00011 (Wiki-2); SKD starts after
# K = 500 (PTB) / 900 (Wiki-2) batches.
skd_sigma=0.1
# OURS for --corpus: PTB's (K and eta count updates of 20 sentences, see below).
case $dataset in
    ptb|corpus|synthetic*) skd_warmup=500; skd_eta=0.0002 ;;
    wiki2)                skd_warmup=900; skd_eta=0.00011 ;;
esac
# q_n is measured on the test set at this sigma for every variant (fairseq-skd-score-lm
# --qn-sigma), so the rows compare the trained embeddings, not the variants' settings.
qn_sigma=$skd_sigma
# what is scored after training, and the paper's numbers shown beside ours (Table 2's column)
score_subsets="valid test"
case $dataset in
    ptb|wiki2) paper=$dataset ;;
    *)         paper=none ;;
esac

# ---- +Noise: OURS. The paper adds Gaussian noise to the target-side (decoder input) word
# embeddings but gives no standard deviation. 0.1 is the bound of the uniform(-0.1, 0.1) init
# of those embeddings (RMS 0.058), so the noise is of the order of the embeddings at the start
# and shrinks relative to them as they grow; the same value as the repository's demo.
noise_std=0.1

# ---- what a Wiki-2 "sentence" is: OURS, see docs/recipes.md. The paper only "added an <EOS>
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
)
log_interval=100  # updates between fairseq's train_inner log records

# ---- --model transformer: OURS, fairseq's transformer_lm. Smaller than its default (6 layers
# of 512/2048, sized for WikiText-103) since PTB and WikiText-2 are 1-2M words: 4 layers of
# 512/2048, 8 heads, input and output embeddings tied (the usual LM setting; W is then the
# input embedding too), dropout 0.3, Adam (0.9, 0.98) with the inverse square root schedule
# and 4000 warm-up updates (Vaswani et al.), still 20 sentences per update, so K and eta mean
# what they mean for the LSTM.
# sigma: fairseq initialises the tied embedding N(0, 1/dim), so its rows start about
# sqrt(2) = 1.4 apart at any dim, where exp(-0.1 d) = 0.87: the paper's sigma 0.1 would put
# q_n at the 0.5 clip for every prediction (measured: README "Your own model"). --skd-sigma auto
# (ln 2 / the mean nearest-neighbour distance in W, followed as W trains) keeps q_n below the
# clip for all but the closest words.
if [[ $model == transformer ]]; then
    arch=transformer_lm
    skd_sigma=auto
    train_flags=(
        --task language_modeling --sample-break-mode eos --tokens-per-sample 1024
        --batch-size 20
        --decoder-layers 4 --decoder-embed-dim 512 --decoder-ffn-embed-dim 2048
        --decoder-attention-heads 8 --share-decoder-input-output-embed
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.0005
        --lr-scheduler inverse_sqrt --warmup-updates 4000 --clip-norm 1.0
        --dropout 0.3 --max-epoch 40 --patience 5
    )
fi

# ---- --dataset synthetic: OURS: a small LM on a small corpus, a minute or so per run on 2 CPU
# cores. 6000 training sentences of the synthetic grammar (58K tokens), the skd_lstm_lm model at
# word dim 128 with W's init std 0.8, which puts its rows ~12.8 apart as the preset's 0.4 does at
# dim 500, so q_n starts below the clip at the paper's sigma. 29 updates per epoch; SKD starts
# after 43 updates and alpha reaches 1 87 updates later (eta = 1/87), after about 4.5 epochs.
# Trained to convergence: at most 40 epochs, stopped after 5 without a better validation loss
# (the best checkpoint is scored). This model does not overfit this corpus (best at or near its
# last epoch): a setting where a regulariser can only cost.
# --dataset synthetic-small: OURS, the offline study (./run.sh): a setting the baseline
# overfits, as the paper's LSTM overfits PTB: a tenth of the corpus (600 sentences) and a larger
# model (dims 256/512/256, W's std 0.566 for the same ~12.8 between rows), 500 tokens (about 50
# sentences) per update, 13 updates per epoch; trained to convergence as above. The baseline is
# best around epoch 9, its validation loss rising after it. SKD's schedule is the paper's PTB one
# scaled to the epoch: K = 500 updates is a quarter of a PTB epoch at 20 sentences per update (4
# updates here), and alpha reaches 1 about 2.4 epochs later (eta 0.03: 33 updates).
# One thread for both: torch's two spinning OpenMP threads are no faster on a model this small,
# and collapse when anything else runs on the machine.
# With --model transformer the corpus is the same and the transformer keeps its settings.
if [[ $dataset == synthetic* ]]; then
    synthetic_sizes=(6000 400 400)   # train, valid, test sentences
    score_subsets="test"
    paper=ptb  # the paper's PTB numbers beside ours, as a reference point (other data)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
if [[ $dataset == synthetic-small ]]; then synthetic_sizes=(600 400 400); fi
if [[ $dataset == synthetic* && $model == lstm ]]; then
    # (embed, hidden, out embed, W's init std, tokens per update, K, eta) of each setting
    if [[ $dataset == synthetic ]]; then
        read -r embed hidden out_embed out_std max_tokens skd_warmup skd_eta <<<"128 128 128 0.8 2000 43 0.0114943"
    else
        read -r embed hidden out_embed out_std max_tokens skd_warmup skd_eta <<<"256 512 256 0.566 500 4 0.03"
    fi
    arch=skd_lstm_lm
    train_flags=(
        --decoder-embed-dim "$embed" --decoder-hidden-size "$hidden"
        --decoder-out-embed-dim "$out_embed" --decoder-out-embed-std "$out_std"
        --task language_modeling --sample-break-mode eos --tokens-per-sample 128
        --optimizer adam --lr 0.002 --clip-norm 1.0 --dropout 0.2 --max-tokens "$max_tokens"
        --max-epoch 40 --patience 5 --num-workers 0
    )
    log_interval=5
fi

if (( smoke )) && [[ $dataset == synthetic* ]]; then synthetic_sizes=(600 100 100); fi
if (( smoke )) && [[ $dataset == synthetic* && $model == lstm ]]; then
    # The smoke test on the synthetic corpus: 600 sentences, 2 updates per epoch, 2 epochs.
    skd_warmup=1
    skd_eta=0.5
    arch=skd_lstm_lm_tiny
    train_flags=(
        --task language_modeling --sample-break-mode eos --tokens-per-sample 128
        --optimizer adam --lr 0.002 --clip-norm 1.0 --dropout 0.2 --max-tokens 2000
        --max-epoch 2 --num-workers 0
    )
    log_interval=1
elif (( smoke )); then
    # The smoke test: a tiny model, 2 epochs on the fixtures (~20 updates per epoch), SKD
    # starting after 10 updates and alpha growing to 0.3; checks the plumbing, not the method.
    skd_warmup=10
    skd_eta=0.01
    if [[ $model == transformer ]]; then
        train_flags+=(--decoder-layers 1 --decoder-embed-dim 32 --decoder-ffn-embed-dim 64
                      --decoder-attention-heads 2 --warmup-updates 10 --lr 0.005)
    else
        arch=skd_lstm_lm_tiny
    fi
    train_flags+=(--max-epoch 2 --dropout 0.0)
    log_interval=5
fi
