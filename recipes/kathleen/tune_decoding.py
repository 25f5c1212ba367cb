"""Tune decoding options on a dev set: encode once, search with every combination, print WER and CER.

    python recipes/kathleen/tune_decoding.py --model exp/kathleen/avg5.pt \
        --cuts exp/kathleen/data/dev_cuts.jsonl.gz --lm exp/kathleen/lexicon.tsv.gz \
        --ctc-weight 0.3,0.5 --lm-weight 0,0.3,0.6 --length-bonus 0,0.5

Prints one line per combination (tab-separated, best WER last) to standard output. The encoder
runs once per batch and the search as often as there are combinations, so a grid of a dozen
settings over the 103 dev utterances takes a few minutes on two CPU cores. Tune on dev only: the
test split is for the one number reported at the end.
"""

import argparse
import itertools
import sys
import time

import lhotse
import torch

from asr.checkpoint import load_model
from asr.decoding import DecodingOptions, hypothesis_text, search
from asr.metrics import char_errors, word_errors
from asr.text import normalize_text


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--cuts", required=True, help="lhotse cut manifest with supervisions (the dev set)")
    parser.add_argument("--lm", default=None, help="LM checkpoint or word lexicon, as for asr-evaluate")
    parser.add_argument("--beam-size", default="10", help="comma-separated values to try")
    parser.add_argument("--ctc-weight", default="0.5")
    parser.add_argument("--lm-weight", default="0")
    parser.add_argument("--length-bonus", default="0")
    parser.add_argument("--eos-threshold", default="1.5")
    parser.add_argument("--word-penalty", default="0", help="per word, with a lexicon as --lm")
    parser.add_argument("--ngram", default=None, help="word n-gram model, with a lexicon as --lm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    penalties = floats(args.word_penalty)
    language_models = {penalty: None for penalty in penalties}
    if args.lm:
        from asr.cli.transcribe import _load_language_model

        for penalty in penalties:
            settings = argparse.Namespace(lm=args.lm, word_penalty=penalty, ngram=args.ngram)
            language_models[penalty] = _load_language_model(settings, model, tokenizer, torch.device("cpu"))
    cuts = sorted(lhotse.load_manifest(args.cuts), key=lambda cut: cut.duration)
    references = [normalize_text(" ".join(s.text for s in cut.supervisions)) for cut in cuts]
    rate = model.config.features.sample_rate
    encoded = []
    with torch.inference_mode():
        for start in range(0, len(cuts), args.batch_size):
            waves = [
                torch.from_numpy(c.resample(rate).load_audio()).mean(0)
                for c in cuts[start : start + args.batch_size]
            ]
            lengths = torch.tensor([w.numel() for w in waves])
            encoded.append(model.encode(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths))
    grid = itertools.product(
        [int(x) for x in args.beam_size.split(",")],
        floats(args.ctc_weight),
        floats(args.lm_weight),
        floats(args.length_bonus),
        floats(args.eos_threshold),
        penalties,
    )
    print("beam\tctc\tlm\tbonus\teos_thr\tword_pen\tWER\tCER\tsub/del/ins\tseconds", flush=True)
    results = []
    for beam, ctc, lm_weight, bonus, threshold, penalty in grid:
        options = DecodingOptions(
            beam_size=beam, ctc_weight=ctc, lm_weight=lm_weight, length_bonus=bonus, eos_threshold=threshold
        )
        begin = time.perf_counter()
        texts = []
        for output in encoded:
            texts += [
                hypothesis_text(nbest[0], tokenizer)
                for nbest in search(model, output, options, language_models[penalty])
            ]
        words, chars = word_errors(references, texts), char_errors(references, texts)
        line = (
            f"{beam}\t{ctc}\t{lm_weight}\t{bonus}\t{threshold}\t{penalty}\t{100 * words.error_rate:.2f}\t"
            f"{100 * chars.error_rate:.2f}\t{words.substitutions}/{words.deletions}/{words.insertions}\t"
            f"{time.perf_counter() - begin:.0f}"
        )
        results.append((words.error_rate, line))
        print(line, flush=True)
    print("best:\t" + min(results)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
