"""Atomic file writes for the CLI and the workflow: a failed or killed run never leaves a partial output.

Every writer goes through :func:`atomic_path`: write to a temporary file in the target's directory,
flush it to disk, then ``os.replace`` it over the target (atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["atomic_path", "read_h5ad", "write_figure_atomic", "write_h5ad_atomic", "write_text_atomic"]


_IN_FLIGHT: set[Path] = set()  # temp files of writes in progress (removed by remove_temp_files on SIGTERM)


def remove_temp_files() -> None:
    """Delete the temporary files of writes still in progress (for a signal handler that is about to exit)."""
    for tmp in list(_IN_FLIGHT):
        with contextlib.suppress(OSError):
            tmp.unlink()


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
        Replace an existing ``path``; otherwise raise :class:`FileExistsError` before anything is written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --force (overwrite=True) to replace it.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file path.")
    directory = path.parent
    blocker = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # mkdir would say "File exists", which reads like path exists
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(blocker)!r} is a file, not a directory.")
    directory.mkdir(parents=True, exist_ok=True)
    # keep the suffix: some writers (anndata, matplotlib) look at it
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    _IN_FLIGHT.add(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _IN_FLIGHT.discard(tmp)


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

    Returns
    -------
    The output path.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


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
