"""Files: writing text so that a reader never sees half of it, leaving no empty folders behind a
command that failed, and saying why a path that should be a file is not one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seq2seq.errors import UserError


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: beside it (a rename is atomic
    only within one file system), hidden, and named by this process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed over ``path`` when the block ends
    well and deleted when it does not: an interruption leaves the old file or the new one,
    never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``replaced_atomically``). The file gets the
    usual permissions (the umask's), as a plain write would."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def not_a_file(path: Path, what: str = "file") -> str:
    """Why ``path`` (which is not a file) cannot be read as a ``what``, for an error message."""
    return f"is a folder, not a {what}" if path.is_dir() else f"{what} not found"


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what
    ``path.mkdir(parents=True)`` is about to create. A command that then fails hands them to
    ``remove_empty_folders``, so that a refused command leaves nothing behind."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def make_folders(path: Path) -> list[Path]:
    """``path.mkdir(parents=True, exist_ok=True)`` that returns the folders it created, for
    ``remove_empty_folders`` if the command fails later; if the mkdir itself fails, what it
    created is removed and the OSError raised."""
    created = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_empty_folders(created)
        raise
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def removed_if_failed(folders: list[Path]) -> Iterator[None]:
    """Run the block; if it fails, remove those of ``folders`` (from ``missing_folders``) it left empty."""
    try:
        yield
    except BaseException:
        remove_empty_folders(folders)
        raise


def make_output_folder(path: Path, option: str) -> list[Path]:
    """Create ``path``; return the folders created, for ``remove_empty_folders`` if the command fails."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is a file; choose a directory")
    try:
        return make_folders(path)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot create it ({exc.strerror}); choose a writable directory") from None


class AtomicOutput:
    """Write to a temp file beside the target; replace the target only when all went well."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise UserError(f"--output {path}: is a directory; give a file path")
        self.path = path
        self.tmp = temp_path(path)
        self.created: list[Path] = []
        try:
            self.created = make_folders(path.parent)
            self.file = open(self.tmp, "w", encoding="utf-8")
        except OSError as exc:
            remove_empty_folders(self.created)
            raise UserError(f"--output {path}: cannot write there ({exc.strerror}); choose a writable path") from None

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
        remove_empty_folders(self.created)
