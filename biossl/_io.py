"""Atomic writes for the API, the CLI and the workflow: a failed or killed run never leaves a partial output.

Every file goes through :func:`atomic_path` and every directory (model, reference) through :func:`atomic_dir`:
write to a temporary path next to the target, flush it to disk, then ``os.replace`` it over the target
(atomic on POSIX within one file system). Outputs get the mode a new file would get (``0o666`` minus the
umask; directories ``0o777`` minus the umask). Temporary paths of unfinished writes are kept in one registry,
which :func:`install_sigterm_cleanup` empties when the process is terminated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "OutputExistsError",
    "atomic_dir",
    "atomic_path",
    "install_sigterm_cleanup",
    "read_h5ad",
    "write_figure_atomic",
    "write_h5ad_atomic",
    "write_text_atomic",
]


_IN_FLIGHT: set[Path] = set()  # temp files and directories of writes in progress (removed on SIGTERM)


class OutputExistsError(FileExistsError, ValueError):
    """An output exists and replacing it was not asked for.

    A :class:`FileExistsError` for ``except`` clauses around file writes and a :class:`ValueError` like every
    other bad argument of the API.
    """


def remove_temp_files() -> None:
    """Delete the temporary files and directories of writes still in progress (for a handler about to exit)."""
    for tmp in list(_IN_FLIGHT):
        _remove(tmp)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def install_sigterm_cleanup(on_exit=None):
    """On SIGTERM delete the temp paths of unfinished writes, call ``on_exit()``, then exit with 128 + 15.

    Exiting from the handler (rather than raising) cannot be swallowed by a library, so an output is either
    complete or absent. Installed only in the main thread and only when nobody else handles SIGTERM.

    Returns
    -------
    A function that restores the previous handler, or None when nothing was installed.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None

    def handler(signum: int, _frame) -> None:
        remove_temp_files()
        if on_exit is not None:
            with contextlib.suppress(Exception):
                on_exit()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _mode(base: int = 0o666) -> int:
    """The mode a new file (``0o666``) or directory (``0o777``) gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def _check_target(path: Path, *, overwrite: bool, directory: bool) -> Path:
    """Refuse an existing target (unless ``overwrite``) or one of the wrong kind; return its parent, created."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --force (overwrite=True) to replace it.")
    if path.exists() and path.is_dir() != directory:
        kind = "is a directory, not a file path" if path.is_dir() else "exists and is not a directory"
        raise (IsADirectoryError if path.is_dir() else NotADirectoryError)(f"{path} {kind}.")
    parent = path.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # mkdir would say "File exists", which reads like path exists
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(blocker)!r} is a file, not a directory.")
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry (the rename) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on failure delete it.

    The caller writes the temporary file (any writer that takes a path). It is fsynced, given the
    permissions a new file would get (``0o666`` minus the umask) and renamed over ``path``.

    Parameters
    ----------
    path
        Final location. Its directory is created if missing.
    overwrite
        Replace an existing ``path``; otherwise raise :class:`OutputExistsError` before anything is written.
    """
    path = Path(path)
    directory = _check_target(path, overwrite=overwrite, directory=False)
    # keep the suffix: some writers (anndata, matplotlib) look at it
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    _IN_FLIGHT.add(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode())
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        _remove(tmp)
        _IN_FLIGHT.discard(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path``, on failure it is deleted.

    The caller writes the files. Each is fsynced and given the mode a new file would get; the directory gets
    ``0o777`` minus the umask. An existing ``path`` (with ``overwrite``) is swapped out and deleted only after
    the new directory is in place.

    Parameters
    ----------
    path
        Final directory. Its parent is created if missing.
    overwrite
        Replace an existing directory; otherwise raise :class:`OutputExistsError` before anything is written.
    """
    path = Path(path)
    parent = _check_target(path, overwrite=overwrite, directory=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    _IN_FLIGHT.add(tmp)
    old = None
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(child, _mode())
        os.chmod(tmp, _mode(0o777))  # mkdtemp makes 0700; a model directory is shared like any other
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / path.name, path)  # put the user's directory back
                raise
            _IN_FLIGHT.add(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(parent)
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                _remove(leftover)
                _IN_FLIGHT.discard(leftover)


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``adata`` to ``path`` as h5ad atomically (temp file in the same directory, fsync, rename).

    Parameters
    ----------
    adata
        Data to write.
    path
        Output file.
    overwrite
        Replace an existing file (raises :class:`FileExistsError` otherwise).
        A backed ``adata`` (``backed="r"``) gets its ``X`` copied from its file by HDF5 itself, chunk by
        chunk, never whole in memory.

    Returns
    -------
    The output path.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        if adata.isbacked:
            _write_backed(adata, tmp)
        else:
            adata.write_h5ad(tmp)
    return Path(path)


def _write_backed(adata: AnnData, tmp: Path) -> None:
    """Write a backed ``adata``: everything but ``X`` through anndata, then ``X`` copied within HDF5.

    anndata's own write of a backed sparse ``X`` reads each of its arrays whole (0.9 GB above the rest at
    10^6 cells x 2,000 genes); ``h5py.Group.copy`` copies the stored group (its chunks, compression and
    encoding attributes) without loading it.
    """
    import anndata as ad
    import h5py

    without_x = ad.AnnData(
        obs=adata.obs, var=adata.var, uns=dict(adata.uns), obsm=dict(adata.obsm), varm=dict(adata.varm),
        obsp=dict(adata.obsp), varp=dict(adata.varp), layers=dict(adata.layers),
    )  # fmt: skip
    without_x.write_h5ad(tmp)
    with h5py.File(adata.filename, "r") as src, h5py.File(tmp, "a") as dst:
        for key in ("X", "raw"):
            if key in src and key not in dst:
                src.copy(src[key], dst, key)


def write_text_atomic(text: str, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`write_h5ad_atomic`."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_figure_atomic(fig, path: str | os.PathLike, *, overwrite: bool = False, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the suffix); see :func:`write_h5ad_atomic`."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def read_h5ad(path: str | os.PathLike, *, backed: bool = False) -> AnnData:
    """Read an h5ad file, turning every way it can be unreadable into one ``ValueError`` line.

    Parameters
    ----------
    path
        File to read (opened read-only; it is never modified).
    backed
        Leave ``X`` on disk (``backed="r"``): enough to inspect ``obs``, ``uns`` and the other keys.
        Close ``adata.file`` when done.
    """
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise ValueError(f"input file {str(path)!r} does not exist.")
    if path.is_dir():
        raise ValueError(f"input {str(path)!r} is a directory, not an h5ad file.")
    if not os.access(path, os.R_OK):
        raise ValueError(f"input file {str(path)!r} is not readable (permission denied).")
    try:
        import h5py

        with h5py.File(path, "r") as fh:  # anndata's own error for a non-AnnData HDF5 file names a constructor argument
            missing = [g for g in ("obs", "var") if g not in fh]
        if missing:
            raise ValueError(f"an HDF5 file without {' and '.join(missing)}, not written by AnnData")
        with warnings.catch_warnings():  # biossl reports duplicated names itself, as its one error line
            warnings.filterwarnings("ignore", message=r"(Variable|Observation) names are not unique")
            return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as err:  # h5py raises OSError, anndata TypeError/KeyError/ValueError on non-AnnData HDF5
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"cannot read {str(path)!r} as an h5ad file ({detail}).") from None
