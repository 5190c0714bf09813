"""Keeping a trajectory's file pages out of memory once written or read.

A trajectory is written once and read block by block, so the kernel's cached copy of
its pages only fills the memory charged to the run (its cgroup; its RSS too where the
file is mapped) with data that is not read again soon. ``drop_cache`` asks the kernel
to forget a range: clean pages go at once; dirty ones only once written back, hence
``sync`` (``fdatasync`` first, for a range just written). Advisory: a no-op where
``posix_fadvise`` is missing (not Linux) or unsupported by the file system.
"""

from __future__ import annotations

import errno
import os


def drop_cache(fd: int, offset: int = 0, length: int = 0, *, sync: bool = False) -> None:
    """Drop the page-cache pages of ``fd``'s bytes ``offset..offset+length`` (``length``
    0: to the end of the file); ``sync``: write the file's dirty pages back first, so
    that the pages just written are dropped too (an I/O error is raised, not hidden)."""
    if sync:
        try:
            os.fdatasync(fd)
        except OSError as exc:  # a file that cannot be synced (EINVAL) is no error here
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:  # advice only (a pipe, an exotic file system): nothing lost
            pass
