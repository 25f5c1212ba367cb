import shutil

import numpy as np
import pytest
import torch
from scipy.signal import find_peaks

from asr.cli.prepare import VENDORED_SYNTHETIC
from asr.corpora.fsdd import (
    DIGIT_WORDS,
    DigitStrings,
    StringConfig,
    fsdd_clips,
    make_strings,
    prepare_digits,
    split_clips,
)
from asr.data import (
    AudioCache,
    AugmentConfig,
    LoaderConfig,
    SpeechDataset,
    augment_waveform,
    collate,
    mains_hum,
    make_loader,
    synthetic_room_response,
)
from asr.features import FeatureConfig, LogMelFeatures
from asr.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def clips(fsdd_dir):
    return fsdd_clips(fsdd_dir)


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.build(DIGIT_WORDS)


def test_fsdd_clips_and_official_split(clips):
    assert len(clips) == 2500
    train, test = split_clips(clips)
    assert len(train) == 2250 and len(test) == 250
    assert all(c.custom["take"] < 5 for c in test)
    cut = clips["7_jackson_32"]
    assert cut.supervisions[0].text == "seven" and cut.custom == {"speaker": "jackson", "take": 32}
    assert cut.sampling_rate == 8000


def test_strings_are_deterministic_single_speaker_and_labelled_in_order(clips):
    train, _ = split_clips(clips)
    config = StringConfig(speed_factors=(0.9, 1.0, 1.1))
    first = make_strings(train, 20, config, seed=3, prefix="s")
    again = make_strings(train, 20, config, seed=3, prefix="s")
    assert [c.id for c in first] == [c.id for c in again]
    assert [c.duration for c in first] == [c.duration for c in again]
    for cut in first:
        words = [s.text for s in sorted(cut.supervisions, key=lambda s: s.start)]
        assert 1 <= len(words) <= 7 and set(words) <= set(DIGIT_WORDS)
        speakers = {s.speaker for s in cut.supervisions}
        assert len(speakers) == 1 and cut.id.endswith(speakers.pop())


def test_audio_cache_renders_strings_exactly_like_lhotse(clips, tokenizer):
    train, _ = split_clips(clips)
    strings = make_strings(train, 12, StringConfig(speed_factors=(0.9, 1.1)), seed=1, prefix="s")
    cache = AudioCache(train)
    assert all(cache.render(cut) is not None for cut in strings)  # speed-perturbed clips included
    cached = SpeechDataset(tokenizer, 8000, cache=cache)[strings]
    plain = SpeechDataset(tokenizer, 8000)[strings]
    assert torch.equal(cached.wave_lens, plain.wave_lens)
    torch.testing.assert_close(cached.waves, plain.waves, rtol=0, atol=1e-6)
    assert cached.texts == plain.texts and torch.equal(cached.targets, plain.targets)


def test_speed_per_digit_draws_a_factor_for_every_digit_and_renders_like_lhotse(clips, tokenizer):
    train, _ = split_clips(clips)
    config = StringConfig(min_digits=6, max_digits=6, speed_factors=(0.9, 1.1), speed_per_digit=True)
    strings = make_strings(train, 8, config, seed=2, prefix="s")

    def factors(cut) -> list[str]:
        return [t.cut.id.rsplit("_sp", 1)[1] for t in cut.tracks if t.cut.supervisions]

    assert all(len(factors(cut)) == 6 for cut in strings)
    assert sum(len(set(factors(cut))) == 2 for cut in strings) >= 6  # mixed factors within a string
    whole = make_strings(train, 8, StringConfig(min_digits=6, max_digits=6, speed_factors=(0.9, 1.1)), 2, "s")
    assert all(len(set(factors(cut))) == 1 for cut in whole)  # the default: one factor per string
    cache = AudioCache(train)
    assert all(cache.render(cut) is not None for cut in strings)
    cached = SpeechDataset(tokenizer, 8000, cache=cache)[strings]
    plain = SpeechDataset(tokenizer, 8000)[strings]
    torch.testing.assert_close(cached.waves, plain.waves, rtol=0, atol=1e-6)


def test_level_jitter_gives_each_digit_its_own_gain_and_renders_like_lhotse(clips, tokenizer):
    train, _ = split_clips(clips)
    config = StringConfig(min_digits=5, max_digits=5, speed_factors=(0.9, 1.0), level_jitter_db=10.0)
    strings = make_strings(train, 8, config, seed=3, prefix="s")

    def gains_db(cut) -> list[float]:
        return [20 * np.log10(float(t.cut.id.rsplit("_vp", 1)[1])) for t in cut.tracks if t.cut.supervisions]

    gains = [gain for cut in strings for gain in gains_db(cut)]
    assert len(gains) == 40 and all(-10.0 - 1e-3 <= gain <= 10.0 + 1e-3 for gain in gains)
    assert max(gains) - min(gains) > 10  # spread over the range, a gain per digit
    plain_config = StringConfig(min_digits=5, max_digits=5, speed_factors=(0.9, 1.0))
    assert all(
        "_vp" not in t.cut.id for cut in make_strings(train, 8, plain_config, 3, "s") for t in cut.tracks
    )
    cache = AudioCache(train)
    assert all(cache.render(cut) is not None for cut in strings)
    cached = SpeechDataset(tokenizer, 8000, cache=cache)[strings]
    plain = SpeechDataset(tokenizer, 8000)[strings]
    torch.testing.assert_close(cached.waves, plain.waves, rtol=0, atol=1e-6)


def test_bare_edges_start_and_end_strings_on_the_speech(clips):
    """bare_edge_probability 1: the first digit starts at 0 s and the last one ends the string, as
    in FSDD's own clips; with 0 (the default) nearly every string has silence before its first digit."""
    train, _ = split_clips(clips)
    bare = make_strings(train, 10, StringConfig(bare_edge_probability=1.0), seed=4, prefix="s")
    padded = make_strings(train, 10, StringConfig(), seed=4, prefix="s")
    for cut in bare:
        speech = sorted(cut.supervisions, key=lambda s: s.start)
        assert speech[0].start == 0.0 and speech[-1].end == pytest.approx(cut.duration, abs=1e-3)
    assert sum(min(s.start for s in cut.supervisions) > 0.01 for cut in padded) >= 8
    half = make_strings(train, 200, StringConfig(bare_edge_probability=0.5), seed=4, prefix="s")
    starts_bare = sum(min(s.start for s in cut.supervisions) == 0.0 for cut in half)
    assert 70 <= starts_bare <= 130


def test_single_clip_strings_are_drawn_at_their_probability(clips):
    """single_clip_probability p: about a share p of the strings are one recording (besides the
    uniform draw's own 1-digit strings, none here with min_digits 2); at 0 there are none."""
    train, _ = split_clips(clips)
    config = StringConfig(min_digits=2, max_digits=7, single_clip_probability=0.3)
    strings = make_strings(train, 300, config, seed=5, prefix="s")
    single = sum(len(cut.supervisions) == 1 for cut in strings)
    assert 60 <= single <= 120  # 90 expected
    assert max(len(cut.supervisions) for cut in strings) == 7
    off_config = StringConfig(min_digits=2, single_clip_probability=0.0)
    off = make_strings(train, 100, off_config, seed=5, prefix="s")
    assert min(len(cut.supervisions) for cut in off) == 2


def test_mixed_speaker_strings_draw_digits_from_every_voice(clips):
    """mixed_speaker_probability p: about a share p of the strings take their digits from any
    speaker (ids end in "mixed"); the others keep one voice. At 0 the strings are the default's."""
    train, _ = split_clips(clips)
    config = StringConfig(min_digits=6, max_digits=10, mixed_speaker_probability=0.4)
    strings = make_strings(train, 200, config, seed=6, prefix="s")
    mixed = [cut for cut in strings if cut.id.endswith("_mixed")]
    assert 55 <= len(mixed) <= 105  # 80 expected
    # six or more digits from five voices: nearly every mixed string has two voices or more
    assert sum(len({s.speaker for s in cut.supervisions}) > 1 for cut in mixed) >= len(mixed) - 2
    for cut in strings:
        if not cut.id.endswith("_mixed"):
            assert {s.speaker for s in cut.supervisions} == {cut.id.rsplit("_", 1)[1]}
    off = make_strings(train, 30, StringConfig(mixed_speaker_probability=0.0), seed=6, prefix="s")
    default = make_strings(train, 30, StringConfig(), seed=6, prefix="s")
    assert [c.id for c in off] == [c.id for c in default]
    assert [c.duration for c in off] == [c.duration for c in default]


def test_noise_augmentation_is_seeded_and_bounded():
    wave = np.sin(np.linspace(0, 100, 8000)).astype(np.float32) * 0.5
    config = AugmentConfig(noise_probability=1.0, min_snr_db=10, max_snr_db=10, min_gain_db=0, max_gain_db=0)
    noisy = augment_waveform(wave, config, np.random.default_rng(1), 8000)
    assert np.array_equal(noisy, augment_waveform(wave, config, np.random.default_rng(1), 8000))
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
    assert abs(snr - 10) < 0.5 and np.abs(noisy).max() <= 1.0


def test_room_response_decays_over_rt60_with_the_drawn_direct_to_reverberant_ratio():
    response = synthetic_room_response(0.4, 6.0, 8000, np.random.default_rng(0))
    assert len(response) == 3200  # 0.4 s at 8 kHz
    tail = response.copy()
    tail[0] -= 1.0  # the direct path
    assert abs(10 * np.log10(1.0 / np.sum(tail**2)) - 6.0) < 0.5
    tenth = len(response) // 10
    decay_db = 10 * np.log10(np.sum(tail[1:tenth] ** 2) / np.sum(tail[-tenth:] ** 2))
    assert 40 < decay_db < 65  # 60 dB over the response, measured between its first and last tenths


def test_reverberation_keeps_length_and_level_and_smears_an_impulse():
    wave = np.zeros(8000, dtype=np.float32)
    wave[1000] = 0.5
    config = AugmentConfig(reverb_probability=1.0, noise_probability=0.0, min_gain_db=0, max_gain_db=0)
    room = augment_waveform(wave, config, np.random.default_rng(3), 8000)
    assert room.shape == wave.shape and room.dtype == np.float32
    assert np.allclose(np.sqrt(np.mean(room**2)), np.sqrt(np.mean(wave**2)), rtol=1e-3)
    assert np.abs(room[:1000]).max() < 1e-6  # causal: nothing before the impulse (FFT round-off only)
    assert np.count_nonzero(np.abs(room[1001:]) > 1e-4) > 500  # the tail follows it
    dry = AugmentConfig(reverb_probability=0.0, noise_probability=0.0, min_gain_db=0, max_gain_db=0)
    assert np.array_equal(augment_waveform(wave, dry, np.random.default_rng(3), 8000), wave)


def test_mains_hum_sits_on_50_or_60_hz_harmonics_at_the_drawn_snr():
    for seed in range(4):
        hum = mains_hum(8000, 8000, np.random.default_rng(seed))
        assert abs(np.mean(hum**2) - 1.0) < 1e-6
        spectrum = np.abs(np.fft.rfft(hum * np.hanning(len(hum))))  # 1 Hz bins over 1 s
        peaks, _ = find_peaks(spectrum, height=0.05 * spectrum.max())
        fundamental = peaks[0]
        assert 49 <= fundamental <= 51 or 59 <= fundamental <= 61
        assert peaks.max() <= 1005  # harmonics stop below 1 kHz
        # every peak is near a multiple of the fundamental (the hum drifts up to 1 % off the mains)
        assert np.all(np.abs(peaks / (peaks / fundamental).round() - fundamental) <= 1.5)
    wave = (np.sin(np.linspace(0, 2000, 16000)) * 0.3).astype(np.float32)
    config = AugmentConfig(
        noise_probability=0.0,
        min_gain_db=0,
        max_gain_db=0,
        hum_probability=1.0,
        min_hum_snr_db=20,
        max_hum_snr_db=20,
    )
    hummed = augment_waveform(wave, config, np.random.default_rng(1), 16000)
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((hummed - wave) ** 2))
    assert abs(snr - 20) < 0.1


def test_hum_that_is_off_draws_no_number():
    """Configurations without hum draw the same random sequence as before the option existed."""
    wave = np.sin(np.linspace(0, 100, 8000)).astype(np.float32) * 0.5
    rng_off, rng_before = np.random.default_rng(7), np.random.default_rng(7)
    augment_waveform(wave, AugmentConfig(hum_probability=0.0), rng_off, 8000)
    augment_waveform(wave, AugmentConfig(), rng_before, 8000)
    assert rng_off.random() == rng_before.random()
    config = AugmentConfig(noise_probability=0.0, min_gain_db=0, max_gain_db=0, hum_probability=1e-9)
    rng_on = np.random.default_rng(7)
    assert np.array_equal(augment_waveform(wave, config, rng_on, 8000), wave)  # drew, but no hum
    assert rng_on.random() != np.random.default_rng(7).random()


def test_clipping_raises_the_peak_over_full_scale_and_cuts_it_there():
    wave = (np.sin(np.linspace(0, 300, 8000)) * 0.2).astype(np.float32)
    config = AugmentConfig(
        noise_probability=0.0, min_gain_db=0, max_gain_db=0, clip_probability=1.0, max_clip_db=12
    )
    for seed in range(5):
        clipped = augment_waveform(wave, config, np.random.default_rng(seed), 8000)
        assert np.abs(clipped).max() == pytest.approx(1.0)
        cut = np.abs(clipped) >= 1.0 - 1e-6
        # a sine raised d dB over full scale is cut on 1 - (2 / pi) asin(10^(-d / 20)) of its samples
        assert 0.0 < cut.mean() < 1 - 2 / np.pi * np.arcsin(10 ** (-12 / 20)) + 0.01
        kept = ~cut & (np.abs(wave) > 1e-3)
        gain = clipped[kept] / wave[kept]  # elsewhere the same waveform, raised by one gain of 0-12 dB
        assert np.allclose(gain, gain[0], rtol=1e-4) and 5.0 - 1e-3 <= gain[0] <= 5.0 * 10 ** (12 / 20) + 1e-3
    off = AugmentConfig(noise_probability=0.0, min_gain_db=0, max_gain_db=0, clip_probability=0.0)
    assert np.array_equal(augment_waveform(wave, off, np.random.default_rng(0), 8000), wave)


def test_collate_pads_and_keeps_lengths():
    batch = collate(["a", "b"], ["x", "yy"], [torch.ones(3), torch.ones(5)], [[4], [4, 5]])
    assert batch.waves.shape == (2, 5) and batch.wave_lens.tolist() == [3, 5]
    assert batch.waves[0, 3:].abs().sum() == 0 and batch.targets.tolist() == [[4, 0], [4, 5]]


def test_a_bad_file_is_skipped_and_counted(tmp_path, fsdd_dir, tokenizer):
    for name in ("0_george_0", "1_george_0"):
        shutil.copy(fsdd_dir / "recordings" / f"{name}.flac", tmp_path / f"{name}.flac")
    cuts = fsdd_clips(tmp_path)
    (tmp_path / "1_george_0.flac").write_bytes(b"not audio any more")  # corrupted after preparation
    batch = SpeechDataset(tokenizer, 8000)[cuts]
    assert batch.ids == ["0_george_0"] and batch.num_skipped == 1


def test_prepare_writes_manifests_and_audio(tmp_path, fsdd_dir):
    paths = prepare_digits(fsdd_dir, tmp_path, num_dev=6, num_test=9)
    from asr.corpora.manifest import load_cuts
    from asr.metrics import read_transcripts

    dev, test = load_cuts(paths["dev"]), load_cuts(paths["test"])
    assert len(dev) == 6 and len(test) == 9
    transcripts = read_transcripts(tmp_path / "test" / "transcripts.txt")
    assert set(transcripts) == {c.id for c in test}
    assert all(transcripts[c.id] == c.supervisions[0].text for c in test)
    for cut in test:
        assert (tmp_path / "test" / "audio" / f"{cut.id}.flac").is_file()
    clips = load_cuts(tmp_path / "fsdd_test_clips.jsonl.gz")
    clip_words = read_transcripts(tmp_path / "fsdd_test_clips.txt")
    assert len(clips) == 250 and clip_words == {c.id: DIGIT_WORDS[int(c.id[0])] for c in clips}
    again = prepare_digits(fsdd_dir, tmp_path / "again", num_dev=6, num_test=9)
    assert [c.duration for c in load_cuts(again["test"])] == [c.duration for c in test]


def test_held_out_strings_use_every_recording_of_the_speaker_once(tmp_path, fsdd_dir):
    """`--held-out lucas`: strings of all of lucas' recordings, both splits, each exactly once."""
    folder = tmp_path / "fsdd"
    folder.mkdir()
    names = [
        f"{digit}_{speaker}_{take}"
        for digit in range(10)
        for speaker in ("lucas", "george")
        for take in (0, 7)
    ]
    for name in names:
        shutil.copy(fsdd_dir / "recordings" / f"{name}.flac", folder / f"{name}.flac")
    paths = prepare_digits(folder, tmp_path / "data", num_dev=2, num_test=0, num_long=0, held_out=("lucas",))
    from asr.corpora.manifest import load_cuts
    from asr.metrics import read_transcripts

    strings = load_cuts(paths["held_out_lucas"])
    words = sorted(
        word
        for text in read_transcripts(tmp_path / "data" / "held_out_lucas" / "transcripts.txt").values()
        for word in text.split()
    )
    assert words == sorted(2 * [DIGIT_WORDS[d] for d in range(10)])  # 20 recordings: takes 0 and 7
    assert all(1 <= len(c.supervisions[0].text.split()) <= 7 for c in strings)
    clip_seconds = sum(c.duration for c in fsdd_clips(folder) if c.custom["speaker"] == "lucas")
    assert sum(c.duration for c in strings) > clip_seconds  # the recordings plus pauses
    clips = load_cuts(tmp_path / "data" / "held_out_lucas" / "clips.jsonl.gz")
    clip_words = read_transcripts(tmp_path / "data" / "held_out_lucas" / "clips.txt")
    assert sorted(c.id for c in clips) == sorted(n for n in names if "lucas" in n)
    assert clip_words == {c.id: DIGIT_WORDS[int(c.id[0])] for c in clips}
    with pytest.raises(ValueError, match="no recordings of theo"):
        prepare_digits(folder, tmp_path / "other", num_dev=0, num_test=0, num_long=0, held_out=("theo",))


FEATURES = LogMelFeatures(FeatureConfig(sample_rate=8000, f_max=4000.0))


def ctc_feasible(cut, tokenizer, levels: int) -> bool:
    """CTC needs a frame per label plus a blank between repeated labels ("three")."""
    frames = FEATURES.num_frames(torch.tensor(round(cut.duration * 8000)))
    for _ in range(levels):
        frames = (frames + 1) // 2  # each pyramid level: ceil(T / 2)
    labels = tokenizer.encode(" ".join(s.text for s in sorted(cut.supervisions, key=lambda s: s.start)))
    repeats = sum(a == b for a, b in zip(labels, labels[1:], strict=False))
    return int(frames) >= len(labels) + repeats


def test_ctc_frames_exceed_labels_on_the_digits_data(tmp_path, fsdd_dir, clips, tokenizer):
    """The CTC head reads the 4x level because at 8x (12.5 frames/s) there are fewer frames than
    characters (the shared benchmark's CTC caveat); checked on the recipe's own strings."""
    paths = prepare_digits(fsdd_dir, tmp_path, num_dev=50, num_test=50)
    from asr.corpora.manifest import load_cuts

    fixed = list(load_cuts(paths["dev"])) + list(load_cuts(paths["test"]))
    assert all(ctc_feasible(cut, tokenizer, levels=2) for cut in fixed)
    train, _ = split_clips(clips)
    fastest = make_strings(train, 300, StringConfig(speed_factors=(1.15,)), seed=0, prefix="fast")
    assert sum(not ctc_feasible(cut, tokenizer, levels=2) for cut in fastest) <= 3
    # digits spoken back to back, sped up: 4x still fits, 8x fails for a large share
    tight = make_strings(
        train,
        300,
        StringConfig(min_pause=0, max_pause=0, max_edge_silence=0, speed_factors=(1.15,)),
        seed=0,
        prefix="tight",
    )
    assert sum(not ctc_feasible(cut, tokenizer, levels=2) for cut in tight) <= 3
    assert sum(not ctc_feasible(cut, tokenizer, levels=3) for cut in tight) >= 60


def test_the_vendored_synthetic_voices_are_training_clips_of_every_digit():
    clips = list(fsdd_clips(VENDORED_SYNTHETIC))
    assert len(clips) == 900 and {c.custom["speaker"] for c in clips} == {"synth"}
    assert all(c.custom["take"] >= 5 for c in clips)  # FSDD's training split: never dev or test
    words = [c.supervisions[0].text for c in clips]
    assert all(words.count(word) == 90 for word in DIGIT_WORDS)
    assert all(c.recording.sampling_rate == 8000 and 0.1 < c.duration < 1.5 for c in clips)


def test_synthetic_voices_join_the_rotation_of_training_voices(tmp_path, fsdd_dir):
    """`asr-prepare digits` lists the synthetic clips apart; training strings take them as one more
    voice, leaving a speaker out still leaves it out, and dev strings stay FSDD's."""
    paths = prepare_digits(
        fsdd_dir, tmp_path, num_dev=4, num_test=0, num_long=0, synthetic_dir=VENDORED_SYNTHETIC
    )
    corpus = DigitStrings.from_options(
        str(paths["train_clips"]),
        str(paths["dev"]),
        strings_per_epoch=60,
        exclude_speakers=["lucas"],
        extra_train_clips=str(paths["synthetic_train_clips"]),
    )
    assert corpus.speakers() == ["george", "jackson", "nicolas", "synth", "yweweler"]
    voices = [cut.id.rsplit("_", 1)[-1] for cut in corpus.train_cuts(0)]
    assert voices.count("synth") == 12 and "lucas" not in voices  # one string in five
    assert all("synth" not in cut.id for cut in corpus.dev_cuts())
    alone = DigitStrings.from_options(str(paths["train_clips"]), str(paths["dev"]), strings_per_epoch=10)
    assert "synth" not in alone.speakers()
    with pytest.raises(FileNotFoundError, match="extra_train_clips=null"):
        DigitStrings.from_options(
            str(paths["train_clips"]),
            str(paths["dev"]),
            10,
            extra_train_clips=str(tmp_path / "none.jsonl.gz"),
        )
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(fsdd_dir / "recordings" / "0_george_7.flac", clash / "0_george_70.flac")
    with pytest.raises(ValueError, match="george are also FSDD's"):
        prepare_digits(fsdd_dir, tmp_path / "other", num_dev=0, num_test=0, num_long=0, synthetic_dir=clash)


def test_digit_strings_corpus_and_loader(tmp_path, fsdd_dir, tokenizer):
    paths = prepare_digits(fsdd_dir, tmp_path, num_dev=4, num_test=4)
    corpus = DigitStrings.from_options(
        str(paths["train_clips"]), str(paths["dev"]), strings_per_epoch=40, speed_factors=[0.9, 1.1]
    )
    assert [c.id for c in corpus.train_cuts(1)] == [c.id for c in corpus.train_cuts(1)]
    assert [c.id for c in corpus.train_cuts(1)] != [c.id for c in corpus.train_cuts(2)]
    dataset = SpeechDataset(tokenizer, 8000, AugmentConfig(), cache=corpus.cache)
    loader = make_loader(corpus.train_cuts(0), dataset, LoaderConfig(max_duration=30, num_buckets=2))
    seen = sum(len(batch) for batch in loader)
    assert seen == 40
    assert corpus.max_utterance_seconds == max(c.duration for c in corpus.train_cuts(0))
