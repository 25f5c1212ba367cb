"""Listen-Attend-Spell speech recognition: training recipes, transcription and WER scoring."""

__version__ = "0.1.0"
