"""The inbox's own folders: opened once and verified at start, and what a restart finds in them.

Anyone who can write the inbox folder may have swapped one of the agent's folders (`.processing/`,
`processed/`, `failed/`) for a symlink, or made it first. Each is opened without following a
symlink and must be a directory the agent's user owns (`open_own`), else `FolderRefused` and
nothing is touched. What a crash left is then cleaned up through those descriptors only
(`recover`): pending records completed or dropped, stale temp files and orphaned job ids removed,
and an earlier version's finish intent dropped unread (it names its own destination, and no path
written in a file is trusted; its file, still claimed, runs again under its job id).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from agent.sources.inbox_names import JOB_ID, RECORD_SUFFIX, exists, parse_pending

log = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
INTENT = ".finish.json"   # the finish intent of earlier versions: dropped at start (it names a path)


class FolderRefused(Exception):
    """One of the inbox's own folders is not a real directory the agent owns: nothing is touched."""


def open_own(path: Path, mode: int) -> int:
    """`path` created if missing, then opened as a directory without following a symlink; refused
    (FolderRefused, descriptor closed) unless it is a directory owned by this process's user."""
    path.parent.mkdir(parents=True, exist_ok=True)   # beside the inbox when configured so (local config)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    try:
        fd = os.open(path, DIR_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:   # ENOTDIR or ELOOP for a symlink (the lstat only names it in the message)
        what = "a symbolic link" if path.is_symlink() else f"not a directory ({exc.strerror})"
        raise FolderRefused(f"{path} is {what}; the inbox will not use it") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise FolderRefused(f"{path} is owned by uid {st.st_uid}, not by the agent (uid {os.geteuid()}); "
                            "the inbox will not use it")
    return fd


def only_owners_rename(folder: int) -> bool:
    """Nobody but its owner can rename what is in the folder: not writable by group and others, or
    sticky. Only then is a path through `.processing/` as safe as its descriptor."""
    mode = os.fstat(folder).st_mode
    return not mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(mode & stat.S_ISVTX)


def recover(processing: int, destinations: set[int]) -> None:
    """Clean up what a crash left, through the folders' descriptors (see the module doc)."""
    for folder in destinations:
        _complete_pending(folder)
    for name in os.listdir(processing):
        if name.endswith(INTENT):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=processing)
            log.warning("inbox: dropped the finish intent %s of an earlier version; its file runs again", name)
    for folder in destinations | {processing}:
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".json.tmp"):   # an earlier version's, killed mid-write
                try:
                    os.unlink(name, dir_fd=folder)
                except OSError as exc:
                    log.warning("inbox: cannot remove the stale temp file %s: %s", name, exc)
    for name in os.listdir(processing):   # job ids of files that are no longer here
        if name.startswith(".") and name.endswith(JOB_ID) and not exists(processing, name[1:-len(JOB_ID)]):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=processing)


def _complete_pending(folder: int) -> None:
    """Finish the finishes a crash interrupted (see Inbox.finish): a pending record whose audio
    reached the destination becomes the record; one whose audio is still claimed is dropped, and
    the claimed audio is taken again."""
    for name in os.listdir(folder):
        parsed = parse_pending(name)
        if parsed is None:
            continue
        final, ok = parsed
        record = final + RECORD_SUFFIX[ok]
        try:
            if exists(folder, final) and not exists(folder, record):
                os.rename(name, record, src_dir_fd=folder, dst_dir_fd=folder)
                log.info("inbox: completed the interrupted finish of %s", final)
            else:
                os.unlink(name, dir_fd=folder)
        except OSError as exc:
            log.error("inbox: cannot complete the finish of %s: %s", name, exc)


def mtime(folder: int, name: str) -> float:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def is_file(folder: int, name: str) -> bool:
    """Anything but a folder (a claimed symlink or FIFO is refused by the job, never followed)."""
    try:
        return not stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False
