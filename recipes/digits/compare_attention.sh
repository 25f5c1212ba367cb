#!/usr/bin/env bash
# Long-range experiment: train the digits model once per attention type with the same budget, then
# evaluate each on the test strings (1-7 digits) and on the long strings (20-40 digits, longer than
# any training string), with and without CTC in decoding. Run after stage 0 of run.sh.
#
#   bash recipes/digits/compare_attention.sh [--epochs N] [--strings N] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=8
strings=3000
threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs=$2; shift 2 ;;
    --strings) strings=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
data_dir=exp/digits/data
for attention in dot additive location; do
  exp_dir=exp/digits_attention/$attention
  asr-train experiment=digits model.attention.type=$attention exp_dir="$exp_dir" data.dir="$data_dir" \
    trainer.max_epochs="$epochs" data.corpus.strings_per_epoch="$strings" trainer.num_threads="$threads"
  for set in test long; do
    for ctc_weight in 0.3 0.0; do
      asr-evaluate --model "$exp_dir/best.pt" --ctc-weight $ctc_weight --out "$exp_dir/report_${set}_ctc$ctc_weight" \
        "$data_dir/$set/cuts.jsonl.gz"
    done
  done
done
echo "reports under exp/digits_attention/*/report_*"
