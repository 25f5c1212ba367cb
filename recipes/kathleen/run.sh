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
# 2 train a character LSTM language model on the training transcripts (plus $EXTRA_TEXT, one sentence
# per line, when given), 3 evaluate on dev (and test when the copy has it) without and with the LM.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root: exp/ is created here

stage=0
stop_stage=3
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
beam_size=10
ctc_weight=0.3
lm_weight=0.2
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
  echo "== stage 2: language model on the training transcripts${EXTRA_TEXT:+ and $EXTRA_TEXT}"
  python -c "import sys, lhotse; [print(s.text) for c in lhotse.load_manifest(sys.argv[1]) for s in c.supervisions]" \
    "$data_dir/train_cuts.jsonl.gz" > "$exp_dir/lm_train.txt"
  if [ -n "${EXTRA_TEXT:-}" ]; then cat "$EXTRA_TEXT" >> "$exp_dir/lm_train.txt"; fi
  python -c "import sys, lhotse; [print(s.text) for c in lhotse.load_manifest(sys.argv[1]) for s in c.supervisions]" \
    "$data_dir/dev_cuts.jsonl.gz" > "$exp_dir/lm_dev.txt"
  asr-train-lm text="$exp_dir/lm_train.txt" dev_text="$exp_dir/lm_dev.txt" \
    exp_dir="$exp_dir/lm" tokenizer_from="$exp_dir/best.pt" \
    lm.embedding_dim=64 lm.hidden_dim=512 lm.num_layers=1 lm.dropout=0.3 trainer.max_epochs=30 \
    trainer.batch_tokens=3000 trainer.num_threads=2
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  for set in dev test; do
    manifest="$data_dir/${set}_cuts.jsonl.gz"
    [ -f "$manifest" ] || { echo "== stage 3: no $set split in this copy (the shared copy withholds test)"; continue; }
    echo "== stage 3: evaluate on $set (beam $beam_size, CTC weight $ctc_weight), without and with the LM"
    asr-evaluate --model "$exp_dir/best.pt" --beam-size $beam_size --ctc-weight $ctc_weight \
      --out "$exp_dir/report_$set" "$manifest"
    if [ -f "$exp_dir/lm/best.pt" ]; then
      asr-evaluate --model "$exp_dir/best.pt" --beam-size $beam_size --ctc-weight $ctc_weight \
        --lm "$exp_dir/lm/best.pt" --lm-weight $lm_weight --out "$exp_dir/report_${set}_lm" "$manifest"
    fi
  done
fi

echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s; model: $exp_dir/best.pt"
