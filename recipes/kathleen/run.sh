#!/usr/bin/env bash
# Kathleen recipe: LAS on one speaker's read English sentences (CMU ARCTIC prompts), trained on a CPU,
# scored on sentences it never heard. Calls only the installed commands.
#
#   bash recipes/kathleen/run.sh                          # download, then every stage
#   KATHLEEN_DIR=/path/to/kathleen bash recipes/kathleen/run.sh   # an upstream or converted copy
#   bash recipes/kathleen/run.sh --stage 3                # re-score a trained model
#   bash recipes/kathleen/run.sh -- tokenizer.type=sentencepiece tokenizer.vocab_size=300   # overrides
#
# Stages: 0 prepare manifests (download and convert when KATHLEEN_DIR is not set), 1 train,
# 2 average the last 5 epochs (avg5.pt), 3 build a word lexicon (wordfreq's 100,000 most frequent
# English words mixed with the training transcripts' words, plus $EXTRA_TEXT when given),
# 4 evaluate avg5.pt on dev (and test when the copy has it): without a language model, and with the
# lexicon and pocketsphinx's US English trigram model fused into the beam search.
# Stage 5 (with --stop-stage 5) trains a character LSTM language model on the training transcripts
# and evaluates with it instead; on dev it did not help (recipes/kathleen/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root: exp/ is created here

stage=0
stop_stage=4
exp_dir=exp/kathleen
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --exp-dir) exp_dir=$2; shift 2 ;;
    --) shift; overrides=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
data_dir=exp/kathleen/data
beam_size=20
# tuned on dev with recipes/kathleen/tune_decoding.py for the phone model with 4-bin frequency masks
# (README, "Decoding weights re-tuned": the middle of a plateau where five trainings gave 20.3-22.3 %,
# not the single best cell); for a character model (-- tokenizer.type=char) the README's settings were
# CTC 0.5, LM 0.45, penalty 3.5, bonus 1.0
ctc_weight=0.7
lm_weight=0.7      # the word LM (lexicon + trigram)
word_penalty=8     # per word (inside the LM score, so x lm_weight), against splitting words
length_bonus=0.0   # per output unit
char_lm_weight=0.2
start=$SECONDS

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  echo "== stage 0: prepare Kathleen manifests in $data_dir"
  asr-prepare kathleen --out "$data_dir" ${KATHLEEN_DIR:+--kathleen-dir "$KATHLEEN_DIR"}
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  echo "== stage 1: train (model, logs and TensorBoard events in $exp_dir)"
  asr-train experiment=kathleen exp_dir="$exp_dir" data.dir="$data_dir" "${overrides[@]}"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  echo "== stage 2: average the last 5 epochs into $exp_dir/avg5.pt"
  asr-average --exp-dir "$exp_dir" --last 5 --out "$exp_dir/avg5.pt"
fi

evaluate() {  # evaluate SET [asr-evaluate options...]: report in $exp_dir/report_SET<suffix>
  local set=$1 suffix=$2; shift 2
  local manifest="$data_dir/${set}_cuts.jsonl.gz"
  if [ ! -f "$manifest" ]; then echo "   no $set split in this copy (the shared copy withholds test)"; return; fi
  asr-evaluate --model "$exp_dir/avg5.pt" --beam-size $beam_size --ctc-weight $ctc_weight \
    --out "$exp_dir/report_${set}${suffix}" "$@" "$manifest"
}

transcripts() {  # the texts of a cut manifest, one per line
  python -c "import sys, lhotse; [print(s.text) for c in lhotse.load_manifest(sys.argv[1]) for s in c.supervisions]" "$1"
}

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  echo "== stage 3: word lexicon from wordfreq and the training transcripts${EXTRA_TEXT:+ and $EXTRA_TEXT}"
  transcripts "$data_dir/train_cuts.jsonl.gz" > "$exp_dir/lm_train.txt"
  if [ -n "${EXTRA_TEXT:-}" ]; then cat "$EXTRA_TEXT" >> "$exp_dir/lm_train.txt"; fi
  asr-lexicon --wordfreq 100000 --text "$exp_dir/lm_train.txt" --text-weight 0.3 --out "$exp_dir/lexicon.tsv.gz"
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  echo "== stage 4: evaluate avg5.pt on dev and test (beam $beam_size, CTC weight $ctc_weight), then with the word LM"
  for set in dev test; do
    evaluate $set ""
    evaluate $set _wordlm --lm "$exp_dir/lexicon.tsv.gz" --ngram en-us --lm-weight $lm_weight \
      --word-penalty $word_penalty --length-bonus $length_bonus
  done
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  echo "== stage 5: character LSTM language model on the training transcripts, then fusion"
  transcripts "$data_dir/train_cuts.jsonl.gz" > "$exp_dir/lm_train.txt"
  if [ -n "${EXTRA_TEXT:-}" ]; then cat "$EXTRA_TEXT" >> "$exp_dir/lm_train.txt"; fi
  transcripts "$data_dir/dev_cuts.jsonl.gz" > "$exp_dir/lm_dev.txt"
  asr-train-lm text="$exp_dir/lm_train.txt" dev_text="$exp_dir/lm_dev.txt" \
    exp_dir="$exp_dir/lm" tokenizer_from="$exp_dir/avg5.pt" \
    lm.embedding_dim=64 lm.hidden_dim=512 lm.num_layers=1 lm.dropout=0.3 trainer.max_epochs=30 \
    trainer.batch_tokens=3000 trainer.num_threads=2
  for set in dev test; do evaluate $set _lm --lm "$exp_dir/lm/best.pt" --lm-weight $char_lm_weight; done
fi

echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s; model: $exp_dir/avg5.pt"
