"""Drop the shared libraries of Python environments from the page cache before a memory benchmark.

    python benchmarks/evict_page_cache.py .venv /path/to/venv_espnet

Peak RSS counts the file-backed pages a process has mapped, and how many pages one fault maps in
depends on how the file sits in the page cache: on 2026-12-07 `import torch` took 709 MiB of RSS
in a venv whose libraries had been read all afternoon and 507 MiB in a fresh one, with
byte-identical files (benchmarks/RESULTS.md). Evicting both venvs' libraries first puts them in the
same state (514 and 505 MiB). Every `*.so*` file under each folder gets
`posix_fadvise(POSIX_FADV_DONTNEED)`; nothing is deleted, and the next import reads them again.
"""

import argparse
import os
from pathlib import Path


def evict(folders: list[Path]) -> int:
    """Advise the kernel to drop every shared library under `folders` from the page cache; the count."""
    count = 0
    for folder in folders:
        for path in folder.rglob("*.so*"):
            if not path.is_file():
                continue
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
            count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders", nargs="+", type=Path, metavar="DIR", help="virtual environments or folders"
    )
    args = parser.parse_args(argv)
    missing = [str(folder) for folder in args.folders if not folder.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    print(f"{evict(args.folders)} shared libraries dropped from the page cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
