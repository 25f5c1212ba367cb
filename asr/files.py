"""Output files that appear complete or not at all.

A full disk, a kill or an error halfway through writing must not leave a truncated file where a good
one was: a transcript file cut short scores as deletions, a truncated checkpoint does not load. Every
file the toolkit writes for a user (checkpoints, transcripts, evaluation reports) goes through
`atomic_write`: the data goes to a temporary file in the same folder, is flushed to disk, and is
renamed over the target only once all of it is there. Until then the target keeps its old content.
A device, a pipe or a terminal (`--output /dev/stdout`, a FIFO) has nothing to replace and is
written in place; a symbolic link keeps pointing where it did, and its target is replaced.
"""

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Open `path` for writing (text: UTF-8 with "\\n" line ends; or `binary`), atomically.

    On leaving the block without an exception the file is flushed, fsync'd and renamed over `path`
    (and the rename made durable); on any exception the temporary file is removed, `path` is left as
    it was and the exception propagates (an OSError keeps its errno and strerror, e.g. ENOSPC).
    """
    mode = "wb" if binary else "w"
    encoding, newline = (None, None) if binary else ("utf-8", "\n")
    if _not_a_file(path):
        with open(path, mode, encoding=encoding, newline=newline) as file:
            yield file
        return
    path = Path(os.path.realpath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, encoding=encoding, newline=newline) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), _permissions(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)


def _not_a_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a device, pipe or terminal, or a name of an open file such as /dev/stdout
    (under /dev or /proc: replacing the file it names would cut a shell's redirection off)."""
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # not there yet (or not reachable: the temporary file will say why)
        return False


def _permissions(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give: the old file's, or 0o666 less the umask
    (mkstemp's own 0o600 would hide a shared experiment's files from its group)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_can_write(path: str | os.PathLike) -> None:
    """Raise OSError now if `path` cannot be written later: its folder is missing or read-only, or
    it is a folder. Writes nothing that stays."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    if _not_a_file(path):
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", str(path))
        return
    with tempfile.TemporaryFile(dir=Path(os.path.realpath(path)).parent):
        pass


def write_stdout(lines: list[str], program: str) -> bool:
    """Write `lines` to stdout; False, after one line on stderr, when it cannot be written (a full
    disk). A reader that left (`... | head`) is not an error. Either way stdout then points at
    /dev/null, so that Python's flush at exit raises no second error."""
    try:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as error:
        print(f"{program}: error: cannot write to stdout ({error.strerror or error})", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True
