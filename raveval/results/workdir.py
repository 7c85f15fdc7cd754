"""Where a run's results live: a local folder or a URI (s3://, gs://, hdfs://,
file://) opened through pyarrow's filesystems.

Every file of a work_dir is read and written through `WorkDir`, so a cluster
run can keep its results on shared storage that outlives the Ray session.
Credentials come from the filesystem's usual places (for S3: the AWS
variables, profile or instance role; `AWS_ENDPOINT_URL` for MinIO and other
S3-compatible servers), never from the URI shown in messages.
"""
from __future__ import annotations

import os
import posixpath
from typing import Optional

import pyarrow.fs as pafs

from raveval.config.secrets import public_url

# On these a file written in one call appears whole or not at all, and a rename
# is a copy: write in place. Elsewhere write a temp file and rename it.
_WHOLE_OBJECT_WRITES = ("S3FileSystem", "GcsFileSystem")


class WorkDirError(RuntimeError):
    """The work_dir cannot be opened, read or written (one line, naming it)."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def display(uri: str) -> str:
    """The work_dir as messages show it: without credentials in the URI or its query."""
    return public_url(uri) if is_uri(uri) else str(uri)


class WorkDir:
    """A run's folder. Paths given to its methods are relative to it ("predictions/part-1.parquet")."""

    def __init__(self, spec: str | os.PathLike):
        spec = str(spec)
        self.spec = spec
        try:
            if is_uri(spec):
                self.fs, self.root = pafs.FileSystem.from_uri(spec)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(spec)
        except (OSError, ValueError, TypeError) as e:  # unknown scheme, bad URI, missing extra
            raise WorkDirError(f"work_dir {display(spec)} cannot be opened: {_reason(e)}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.whole_object_writes = type(self.fs).__name__ in _WHOLE_OBJECT_WRITES

    def __str__(self) -> str:
        return display(self.spec) if is_uri(self.spec) else self.root

    def path(self, *parts: str) -> str:
        """The full path of a file in this work_dir (for pyarrow calls that take `filesystem=`)."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def local_path(self, *parts: str) -> Optional[str]:
        """The path on this machine's disk, or None for a remote work_dir."""
        return self.path(*parts) if self.local else None

    def makedirs(self, *parts: str) -> None:
        self._call("create", lambda: self.fs.create_dir(self.path(*parts), recursive=True), parts)

    def exists(self, *parts: str) -> bool:
        info = self._call("read", lambda: self.fs.get_file_info(self.path(*parts)), parts)
        return info.type != pafs.FileType.NotFound

    def list(self, folder: str, prefix: str = "", suffix: str = "") -> list[str]:
        """Sorted names of the files in `folder` (none if it does not exist)."""
        sel = pafs.FileSelector(self.path(folder), allow_not_found=True)
        infos = self._call("list", lambda: self.fs.get_file_info(sel), (folder,))
        names = (posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))

    def read_bytes(self, *parts: str) -> Optional[bytes]:
        """The file's bytes, or None if it does not exist."""
        def read():
            try:
                with self.fs.open_input_stream(self.path(*parts)) as f:
                    return f.read()
            except FileNotFoundError:
                return None
        return self._call("read", read, parts)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a file so that readers see it whole or not at all."""
        self.write_with(lambda path: self._put(path, data), *parts)

    def write_with(self, write, *parts: str) -> None:
        """`write(path)` writes the file at the path it is given (for pyarrow
        writers); readers see the result whole or not at all."""
        final = self.path(*parts)

        def go():
            self.fs.create_dir(posixpath.dirname(final), recursive=True)
            if self.whole_object_writes:
                write(final)
                return
            tmp = f"{final}.{os.getpid()}.tmp"
            try:
                write(tmp)
                self.fs.move(tmp, final)  # a rename: atomic on local disks and HDFS
            except BaseException:
                self._delete_quietly(tmp)
                raise
        self._call("write", go, parts)

    def move(self, src: str, dst: str) -> None:
        """Rename a file within the work_dir (a copy and a delete on object stores)."""
        self._call("move", lambda: self.fs.move(self.path(src), self.path(dst)), (src,))

    def delete(self, *parts: str) -> None:
        """Delete a file if it is there."""
        self._call("delete", lambda: self._delete_quietly(self.path(*parts)), parts)

    def _put(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _call(self, what: str, fn, parts):
        try:
            return fn()
        except (OSError, ValueError) as e:
            where = posixpath.join(str(self), *parts) if parts else str(self)
            raise WorkDirError(f"cannot {what} {where}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    # pyarrow suggests an option raveval does not pass: buckets are made by their owner.
    text = text.replace("To create buckets, enable the allow_bucket_creation option.", "Create it first.")
    return f"{type(e).__name__}: {text}".rstrip(": ")
