"""Listen-Attend-Spell speech recognition: training recipes, transcription and WER scoring."""

import os

# Transparent huge pages for PyTorch's CPU tensors of 2 MiB and more (read by c10's allocator at its
# first large allocation, so set before any). A training step allocates and frees about 400 MiB of
# activations; with 4 KiB pages each step faults them all in again, which cost 12-16 % of the
# benchmark contract's step on a 2-core CPU, at the same peak memory (README, "Performance").
# THP_MEM_ALLOC_ENABLE=0 in the environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
