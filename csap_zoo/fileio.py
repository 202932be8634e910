"""Atomic writes of files and folders, and the cleanup of temporaries that a killed process left behind.

Content goes to a temporary sibling of the destination, then is renamed into place, so a failure never leaves a
half-written file (or folder) under the final name. Temporaries are created with ``os.open(..., 0o666)`` /
``os.mkdir(..., 0o777)``, so they get the permissions the umask (and default ACLs) give any new file, not the
0600 / 0700 of ``mkstemp`` / ``mkdtemp``.

Every temporary is named ``.<destination name>.<owner>-<pid>-<random>.tmp[<suffix>]``: ``owner`` is a short hash
of the host name, the boot id and the PID namespace, ``pid`` the writing process, ``random`` 8 hex digits; a
staging folder also holds an empty ``.csap-zoo-staging`` marker until it is published. Cleanup
(:func:`clean_stale_temp`) only ever considers names of exactly that pattern, and folders only with the marker
inside: a user's ``.best.mycopy_1.tmp/`` or ``.log.jsonl.20240101.tmp`` is never touched, however old.

Of those, a temporary whose owner is this host and PID namespace is removed only when it is provably orphaned: no
process with its PID exists. So a live writer on this machine and namespace never loses its temporary, and a
killed one's is removed by the next start (if its PID was reused meanwhile, once that process is gone too).
A temporary from another host or PID namespace (a container sharing the folder) cannot be checked that way: it is
removed once neither it nor (for a folder) any entry directly inside has been modified for ``max_age`` seconds
(default one hour). That protects a writer there that keeps writing; one that pauses for longer than ``max_age``
between writes loses its temporary (its rename then fails with an error, nothing half-written appears).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import DiskFullError, UnsafePathError

try:
    import fcntl
except ImportError:  # not POSIX: no locks (see try_lock)
    fcntl = None  # type: ignore[assignment]

__all__ = ["STALE_AGE_S", "atomic_folder", "atomic_write", "atomic_write_all", "check_relative_path",
           "clean_stale_partials", "clean_stale_temp", "contained_path", "disk_full_error", "fsync_dir", "is_stale_temp", "locked_partial",
           "not_a_regular_file", "same_file", "temp_name", "try_lock", "unlink_if_same"]

PathLike = Union[str, os.PathLike]

STALE_AGE_S = 3600.0
"""A temporary untouched for this long is stale whoever made it."""

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<owner>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?:\.[A-Za-z0-9]+)?$")
STAGING_MARKER = ".csap-zoo-staging"
"""The empty file inside a staging folder that marks it as csap-zoo's (removed just before it is published)."""
_OWNER: Optional[str] = None


def check_relative_path(relative: str, what: str = "path") -> str:
    """``relative`` if it is a relative POSIX path made of plain segments, else :class:`UnsafePathError`.

    Refused: an empty string, a leading ``/``, empty, ``.`` or ``..`` segments, backslashes (a separator on
    Windows), NUL and other control characters. Used on every name from a file or a server before it is joined to a
    folder of ours."""
    if not isinstance(relative, str) or not relative:
        raise UnsafePathError(f"{what} {relative!r} is empty or not a string; give a relative path such as "
                              f"'model.safetensors' or 'weights/model.safetensors'")
    bad = next((c for c in relative if c == "\\" or ord(c) < 32 or c == "\x7f"), None)
    if relative.startswith("/") or bad is not None or any(part in ("", ".", "..") for part in relative.split("/")):
        raise UnsafePathError(f"{what} {relative!r} is not a plain relative path (no leading '/', no empty, '.' or "
                              f"'..' segments, no backslashes or control characters): it could point outside its "
                              f"folder")
    return relative


def not_a_regular_file(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be read as a file, in words ("does not exist", "is a folder", "is a FIFO (named pipe)",
    ...), or None for a regular file (or a link to one). Lets a message say what was given instead of "not found"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of the path is a file, not a folder)"
    except PermissionError:
        return "cannot be reached (permission denied on a folder of its path)"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return "is " + next((what for test, what in kinds if test(mode)), "not a regular file") + ", not a regular file"


def contained_path(root: PathLike, relative: str, what: str = "path") -> Path:
    """``root / relative``, proven to stay inside ``root``: ``relative`` passes :func:`check_relative_path`, and
    the folder that would hold the result, with every link on the way resolved, is ``root`` or below it (a link
    inside ``root`` that points elsewhere is refused). The last segment itself is not resolved: callers replace or
    read it, which never writes through it."""
    check_relative_path(relative, what)
    root = Path(root)
    path = root.joinpath(*relative.split("/"))
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(path.parent)
    if os.path.commonpath([real_root, real_parent]) != real_root:
        raise UnsafePathError(f"{what} {relative!r} leads out of {root} (a folder on the way resolves to "
                              f"{real_parent}); remove that link or use another cache folder")
    return path


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
# torch.save and safetensors report a failed write as a RuntimeError without the errno: such a failure counts as a
# full disk when less than this is free right after it
_NEARLY_FULL = 4 << 20


def disk_full_error(err: BaseException, path: PathLike) -> Optional[DiskFullError]:
    """The :class:`DiskFullError` to raise instead of ``err``, a failed write of ``path``, when the disk holding it
    is full: ``err`` (or an error it wraps) is ENOSPC / EDQUOT, or it is an OSError / RuntimeError while less than
    4 MiB are free there. None otherwise. Call it before the partial file is removed (that frees space again)."""
    folder = Path(path).parent
    cause: Optional[BaseException] = err
    no_space = False
    for _ in range(8):
        if cause is None:
            break
        if (isinstance(cause, OSError) and cause.errno in _NO_SPACE) or any(
                text in str(cause) for text in _NO_SPACE_TEXTS):  # safetensors words it only in its message
            no_space = True
            break
        cause = cause.__cause__ or cause.__context__
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not no_space and not (isinstance(err, (OSError, RuntimeError)) and free is not None and free < _NEARLY_FULL):
        return None
    left = "an unknown amount" if free is None else f"{free / 2 ** 20:.1f} MiB"
    return DiskFullError(errno.ENOSPC, f"no space left on the disk holding {path} ({left} free when the write "
                                       f"failed); free some space or write elsewhere, then retry. What was at "
                                       f"{path} before is unchanged.", str(path))


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _owner() -> str:
    """Identifies the PID space of this process: the same value means a PID can be checked with ``kill(pid, 0)``."""
    global _OWNER
    if _OWNER is None:
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        key = f"{socket.gethostname()}|{_read('/proc/sys/kernel/random/boot_id')}|{pidns}"
        _OWNER = hashlib.sha1(key.encode()).hexdigest()[:8]
    return _OWNER


def temp_name(name: str, suffix: str = "") -> str:
    """A fresh temporary name for destination ``name`` (see the module docstring for the pattern)."""
    return f".{name}.{_owner()}-{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"


def fsync_dir(folder: PathLike) -> None:
    """Make renames in ``folder`` durable (best effort: some file systems cannot fsync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp_file(folder: Path, name: str, suffix: str) -> Path:
    while True:
        tmp = folder / temp_name(name, suffix)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _new_temp_dir(folder: Path, name: str) -> Path:
    while True:
        tmp = folder / temp_name(name)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        os.close(os.open(tmp / STAGING_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return tmp


def atomic_write_all(items: Sequence[Tuple[PathLike, Callable[[str], None]]], suffix: str = "", *,
                     fsync: bool = False) -> List[Path]:
    """Write several files so that all of them appear or none: each ``write(tmp_path)`` fills a temporary
    sibling of its destination, then every temporary is renamed into place; on a failure all are removed.

    ``suffix`` is appended to the temp names for writers that look at the extension (e.g. ".onnx"). ``fsync``
    flushes the files and the renames to disk before returning (for files a crash must not lose, e.g.
    checkpoints). Files get the permissions of any new file (umask, default ACLs).
    """
    paths = [Path(path) for path, _ in items]
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(f"destination {path} is a directory; give a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
    staged: List[Path] = []
    path = paths[0] if paths else Path(".")
    try:
        for path, (_, write) in zip(paths, items):
            tmp = _new_temp_file(path.parent, path.name, suffix)
            staged.append(tmp)
            mode = os.stat(tmp).st_mode & 0o7777
            write(str(tmp))
            if os.stat(tmp).st_mode & 0o7777 != mode:  # a writer that replaced the file (e.g. with its own mkstemp)
                os.chmod(tmp, mode)
            if fsync:
                _fsync_file(tmp)
        for tmp, path in zip(staged, paths):
            os.replace(tmp, path)
        staged = []
    except Exception as err:  # any writer's error (torch, safetensors, PIL) on a full disk
        full = None if isinstance(err, DiskFullError) else disk_full_error(err, path)
        if full is None:
            raise
        raise full from err
    finally:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    if fsync:
        for folder in dict.fromkeys(path.parent for path in paths):
            fsync_dir(folder)
    return paths


def atomic_write(path: PathLike, write: Callable[[str], None], suffix: str = "", *, fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the temp file is removed on failure (see
    :func:`atomic_write_all` for ``suffix`` and ``fsync``)."""
    return atomic_write_all([(path, write)], suffix, fsync=fsync)[0]


@contextlib.contextmanager
def atomic_folder(path: PathLike, names: Optional[Sequence[str]] = None, *, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; when the block ends without an error, publish it.

    If ``path`` does not exist, the staging folder is renamed to it (one atomic step). If it does, the files
    ``names`` (default: every file written into the staging folder) are each renamed into it, replacing files of
    the same name; other files there are kept. The staging folder is removed in every case.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"destination {target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = _new_temp_dir(target.parent, target.name)
    except OSError as err:
        full = disk_full_error(err, target)
        if full is None:
            raise
        raise full from err
    try:
        yield staging
        written = list(names) if names is not None else sorted(p.name for p in staging.iterdir()
                                                               if p.name != STAGING_MARKER)
        if fsync:
            for name in written:
                _fsync_file(staging / name)
        if not target.exists():
            os.unlink(staging / STAGING_MARKER)
            try:
                os.rename(staging, target)
            except OSError:  # another writer created it meanwhile: fall back to file by file
                if not target.is_dir():
                    raise
            else:
                if fsync:
                    fsync_dir(target.parent)
                return
        for name in written:
            os.replace(staging / name, target / name)
        if fsync:
            fsync_dir(target)
    except Exception as err:  # any writer's error (torch, safetensors, PIL) on a full disk
        full = None if isinstance(err, DiskFullError) else disk_full_error(err, target)
        if full is None:
            raise
        raise full from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def _last_touched(path: Path) -> float:
    """Newest mtime of a file, or of a folder and its direct entries (a staging folder being filled)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def is_stale_temp(path: PathLike, max_age: float = STALE_AGE_S, now: Optional[float] = None) -> bool:
    """Whether ``path`` is one of our temporaries that no live writer owns (see the module docstring)."""
    path = Path(path)
    match = _TEMP_RE.match(path.name)
    if match is None:
        return False
    if path.is_dir() and not path.is_symlink() and not (path / STAGING_MARKER).is_file():
        return False  # not a staging folder of ours (or one being published right now)
    if match.group("owner") == _owner():
        pid = int(match.group("pid"))
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return (time.time() if now is None else now) - _last_touched(path) >= max_age
    except FileNotFoundError:
        return False


def clean_stale_temp(folder: PathLike, names: Union[str, re.Pattern, None] = None,
                     max_age: float = STALE_AGE_S) -> List[Path]:
    """Remove the stale temporaries in ``folder`` whose destination name matches ``names`` (a regular
    expression matched in full; ``None``: any). Returns what was removed; nothing else is ever touched."""
    folder = Path(folder)
    pattern = re.compile(names) if isinstance(names, str) else names
    removed: List[Path] = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for path in entries:
        match = _TEMP_RE.match(path.name)
        if match is None or (pattern is not None and not pattern.fullmatch(match.group("name"))):
            continue
        if not is_stale_temp(path, max_age, now):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue
        removed.append(path)
    return removed


# ---------------------------------------------------------------------- file identity and locks
def same_file(path: PathLike, identity: Tuple[int, int], follow: bool = True) -> bool:
    """Whether ``path`` is still the file with this ``(st_dev, st_ino)``."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == identity


def unlink_if_same(path: PathLike, identity: Tuple[int, int]) -> bool:
    """Remove ``path`` if it is still the file that was read (not a copy another process has put there since)."""
    if not same_file(path, identity, follow=False):
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def try_lock(fd: int) -> Optional[bool]:
    """Take an exclusive flock without waiting: True if taken, False if another process holds it, None where the
    system or file system has no such locks (then cache entries are not serialised and only age marks a
    ``.partial`` as stale)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


# ---------------------------------------------------------------------- streamed writes held by a lock
def _new_partial(target: Path) -> Tuple[int, Path]:
    while True:
        partial = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try_lock(fd)  # a new file nobody else has opened: taken at once where locks exist
        return fd, partial


@contextlib.contextmanager
def locked_partial(target: PathLike) -> Iterator[BinaryIO]:
    """The atomic writer's streaming form, for writes that take long (downloads): yields a binary handle on
    ``.<name>.<random>.partial`` next to ``target``, exclusively flock-ed for as long as it is open. When the block
    ends without an error the file is flushed, fsync-ed and renamed to ``target`` (still locked, so nobody takes it
    for a leftover meanwhile); on an error it is removed. A killed writer's partial stays locked by nobody, which
    is how :func:`clean_stale_partials` tells it from a live one (without locks: by age)."""
    target = Path(target)
    fd, partial = _new_partial(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(partial, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def clean_stale_partials(target: PathLike, max_age: float = STALE_AGE_S) -> List[Path]:
    """Remove the ``.partial`` files of ``target`` that :func:`locked_partial` made (exactly
    ``.<name>.<12 hex digits>.partial``; no other name is touched) and no live process holds locked. Where the file
    system has no locks, age decides: untouched for ``max_age`` seconds. Returns what was removed."""
    target = Path(target)
    removed = []
    ours = re.compile(re.escape(f".{target.name}.") + r"[0-9a-f]{12}\.partial")
    candidates = [(p, 0.0) for p in target.parent.glob(f".{glob.escape(target.name)}.*.partial")
                  if ours.fullmatch(p.name)]
    for partial, min_age in candidates:
        try:
            fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            locked = try_lock(fd)
            if locked is None:  # no locks here: only age tells a leftover from a live writer
                min_age = max_age
            if locked is False or (min_age and time.time() - info.st_mtime < min_age):
                continue
            if unlink_if_same(partial, (info.st_dev, info.st_ino)):
                removed.append(partial)
        finally:
            os.close(fd)
    return removed
