# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with the sourcing recipe
# Settings of recipes/mt/run.sh (Table 3 and Fig. 4 of Hahn & Choi 2019), sourced after the
# options are parsed ($src, $tgt, $smoke set). Each value is marked:
#   PAPER  taken from the paper (Sections 4.1, 4.3);
#   OURS   the paper does not give it: our choice, with the reason.
# Change them here (or pass fairseq flags after `--`, which come last and win).

# ---- model: PAPER "Attention-based NMT ... (Bahdanau et al., 2015) ... replacing GRU with LSTM
# and using BPE": the skd_bahdanau preset (Bahdanau's sizes: embeddings 620, 1000 hidden units,
# readout 500; fairseq_skd/models/skd_bahdanau_nmt.py).
arch=skd_bahdanau

# ---- vocabulary: PAPER "The dictionary size is 10K for En-Fi and Fi-En ... and 30K for En-De".
# OURS: how to get there. One joint BPE (subword-nmt) over both languages with as many merges
# as the dictionary size, then each side's fairseq dictionary capped at that size (the few
# rarest BPE units beyond it become <unk>).
case $src-$tgt in
    en-fi|fi-en) dict_size=10000 ;;
    en-de)       dict_size=30000 ;;
esac
bpe_merges=$dict_size
bpe_vocab_threshold=50   # subword-nmt's recommended --vocabulary-threshold for apply-bpe

# ---- training-data cleaning: OURS (Moses' clean-corpus-n.perl rules): drop pairs with an empty
# side, more than 80 tokens on a side (Moses-tokenized, before BPE), or a length ratio above 3
# (catches misaligned pairs; Finnish has ~25% fewer tokens than English, so 1.5 would cut good
# pairs). Validation and test sets are never filtered.
max_len=80
len_ratio=3

# ---- SKD: PAPER sigma = 0.1 (the LM value; Fig. 3 is the En-Fi NMT run). OURS: K and eta, which
# the paper gives for LM only. Fig. 3(b) shows alpha growing from 0 to 1 during NMT training; we
# start SKD after 5000 updates (the model's output embeddings must first mean something) and let
# alpha reach 1 after 50000 more (~2 epochs of En-Fi at 80 sentences per update, as the LM
# settings reach alpha = 1 after ~2-2.5 epochs).
skd_sigma=0.1
skd_warmup=5000
skd_eta=0.00002

# ---- +Noise: OURS (std not in the paper): 0.1, the bound of the decoder input embeddings'
# uniform(-0.1, 0.1) init, as for the LM (recipes/conf/lm.sh).
noise_std=0.1

# ---- decoding: PAPER beam widths 1 and 12, BLEU on the dev and test sets.
beams="1 12"
gen_flags=(--batch-size 32 --required-batch-size-multiple 1 --lenpen 1.0)

# ---- training: OURS (the paper gives none of these).
train_flags=(
    --task translation --source-lang "$src" --target-lang "$tgt"
    --batch-size 80 --max-tokens 4000   # Bahdanau et al.'s 80 sentences, capped for long ones
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 0.001   # Adam's default step size
    --clip-norm 1.0                                           # Bahdanau et al. clip at 1
    --lr-scheduler reduce_lr_on_plateau --lr-shrink 0.5 --lr-patience 0
    --dropout 0.2
    --max-epoch 10
    --seed 1
    # Fig. 4: validation BLEU (greedy, detokenized) every 5000 updates and at each epoch's end;
    # the best checkpoint is the one with the highest validation BLEU.
    --eval-bleu --eval-bleu-args '{"beam": 1}' --eval-bleu-detok moses --eval-bleu-remove-bpe
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
    --validate-interval-updates 5000
)

if (( smoke )); then
    # The smoke test: a tiny model, 2 epochs on the fixtures (~15 updates per epoch), a few
    # hundred BPE merges; checks the plumbing, not the method.
    arch=skd_bahdanau_tiny
    dict_size=1000
    bpe_merges=300
    bpe_vocab_threshold=1
    skd_warmup=10
    skd_eta=0.02
    train_flags+=(--max-epoch 2 --batch-size 32 --dropout 0.0 --validate-interval-updates 0)
fi
