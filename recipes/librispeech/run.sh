#!/usr/bin/env bash
# LibriSpeech recipe: LAS with sentencepiece BPE on one or several GPUs, the last epochs averaged,
# WER on test-clean and test-other. Calls only the installed commands (and torchrun).
#
#   bash recipes/librispeech/run.sh                                   # train-clean-100, one GPU, downloads
#   LIBRISPEECH_DIR=/data/LibriSpeech bash recipes/librispeech/run.sh # an existing copy
#   bash recipes/librispeech/run.sh --subset librispeech --num-gpus 4 # all 960 h on 4 GPUs (torchrun)
#   bash recipes/librispeech/run.sh --stage 2                         # average and evaluate a trained run
#   bash recipes/librispeech/run.sh --stage 3 --test-sets "dev_other test_other"   # other prepared sets
#   bash recipes/librispeech/run.sh -- trainer.max_epochs=30 data.loader.max_duration=300   # Hydra overrides
#
# Stages: 0 prepare manifests (lhotse's LibriSpeech recipe; downloads without LIBRISPEECH_DIR),
# 1 train, 2 average the last --average epochs into avg<N>.pt, 3 evaluate it on --test-sets
# (default test-clean and test-other).
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root: exp/ is created here

stage=0
stop_stage=3
subset=train-clean-100   # mini_librispeech (5 h) | train-clean-100 | librispeech (960 h)
num_gpus=1
average=5                # epochs averaged; at most the experiment's trainer.keep_epoch_checkpoints (10)
beam_size=10
ctc_weight=0.3
test_sets="test_clean test_other"   # <set>_cuts.jsonl.gz in the data folder
exp_dir=exp/librispeech
data_dir=exp/librispeech/data
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --subset) subset=$2; shift 2 ;;
    --num-gpus) num_gpus=$2; shift 2 ;;
    --average) average=$2; shift 2 ;;
    --beam-size) beam_size=$2; shift 2 ;;
    --test-sets) test_sets=$2; shift 2 ;;
    --exp-dir) exp_dir=$2; shift 2 ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --) shift; overrides=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
model=$exp_dir/avg$average.pt
start=$SECONDS

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  echo "== stage 0: prepare $subset manifests in $data_dir"
  asr-prepare librispeech --subset "$subset" --out "$data_dir" \
    ${LIBRISPEECH_DIR:+--librispeech-dir "$LIBRISPEECH_DIR"}
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  echo "== stage 1: train on $num_gpus GPU(s) (model, logs and TensorBoard events in $exp_dir)"
  train=(asr-train)
  if [ "$num_gpus" -gt 1 ]; then  # one process per GPU; data.loader.max_duration is per process
    train=(torchrun --standalone --nproc_per_node "$num_gpus" -m asr.cli.train)
  fi
  "${train[@]}" experiment=librispeech exp_dir="$exp_dir" data.dir="$data_dir" "${overrides[@]}"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  echo "== stage 2: average the last $average epochs into $model"
  asr-average --exp-dir "$exp_dir" --last "$average" --out "$model"
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  for part in $test_sets; do
    echo "== stage 3: decode $part (beam $beam_size, CTC weight $ctc_weight) and score"
    asr-evaluate --model "$model" --beam-size "$beam_size" --ctc-weight "$ctc_weight" \
      --out "$exp_dir/report_${part}_avg$average" "$data_dir/${part}_cuts.jsonl.gz" \
      | tee "$exp_dir/${part}_avg${average}_wer.txt"
  done
  echo "== results ($model, beam $beam_size, CTC weight $ctc_weight, no LM)"
  for part in $test_sets; do
    echo "   $part: $(grep '%WER' "$exp_dir/${part}_avg${average}_wer.txt")"
  done
fi

echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
