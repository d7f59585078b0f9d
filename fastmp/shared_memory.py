"""Shared memory for direct access across processes (fastmp).

The same API as ``multiprocessing.shared_memory``; the differences are
deliberate fixes (see docs/shared_memory.md):

* Only the process that *created* a segment tracks it.  Attaching by name
  (in another process or interpreter) never causes the segment to be
  unlinked when that process exits (gh-82300).  ``track=`` is accepted on
  every Python version.  A creator that exits (or is killed) without
  calling ``unlink()`` has its tracked segments unlinked by a small
  per-creator tracker process, with the stdlib's "leaked shared_memory"
  warning.
* ``ShareableList`` round-trips ``str``/``bytes`` values that end in NUL
  bytes exactly (gh-96779), with the stdlib's binary layout, and item
  writes are atomic for readers in other processes (fastmp-made lists).
* ``close()`` while a view of ``buf`` (a memoryview slice, a numpy array)
  is alive does not raise and never crashes: the pages stay mapped until
  the last view is gone.
"""

__all__ = ['ShareableList', 'SharedMemory']

import functools
import os
import struct
import sys
import types

from . import _fastmp

_shm_open = _fastmp._shm_open
_shm_unlink = _fastmp._shm_unlink

_O_CREX = os.O_CREAT | os.O_EXCL

# Short names: some BSDs limit POSIX shared memory names to 14 chars.
_SHM_SAFE_NAME_LENGTH = 14
_SHM_NAME_PREFIX = '/psm_'
_USE_POSIX = True


def _make_filename():
    "Create a random filename for the shared memory object."
    nbytes = (_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2
    return _SHM_NAME_PREFIX + os.urandom(nbytes).hex()


# ---- creator-side tracking ----------------------------------------------
#
# The first tracked creation in a process starts a tracker: a small
# interpreter that shares a table of names with its creator (a memfd; the
# C core claims and frees 512-byte slots in it without any syscall) and
# holds the read end of a pipe.  When every holder of the pipe's write end
# is gone (the creator and its fork children exited, however they died),
# it unlinks the names still registered and warns once, like the stdlib's
# resource tracker.  Only creators register, so attaching never unlinks
# anything (gh-82300).  Names that do not fit the table go over the pipe
# as "+name" / "-name" lines.

_TRACK_SLOTS = 65536  # 32 MiB sparse memfd; touched pages only

# The tracker's program (run by path: it must not need fastmp importable).
_TRACKER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '_shm_tracker.py'
)

_tracker_fd = -1
_tracked = {}  # name -> table slot (-1: sent over the pipe)


def _start_tracker():
    global _tracker_fd
    exe = sys.executable
    if not exe:
        return -1
    import signal

    table = os.memfd_create("fastmp-shm-track", os.MFD_CLOEXEC)
    try:
        os.ftruncate(table, _TRACK_SLOTS * 512)
        r, w = os.pipe()
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, r, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, table, 3),
            ]
            # Blocked signals stay blocked across exec: Ctrl-C sent to the
            # process group must not stop the cleanup.
            os.posix_spawn(
                exe,
                [exe, '-I', '-S', _TRACKER],
                os.environ,
                file_actions=actions,
                setsigmask=(signal.SIGINT, signal.SIGTERM),
            )
        except OSError:
            os.close(w)
            return -1
        finally:
            os.close(r)
        _fastmp._shm_track_init(table, _TRACK_SLOTS)
    finally:
        os.close(table)
    _tracker_fd = w
    return w


def _own_tracker():
    """From now on this process's segments go to a tracker of its own:
    a fork child (a manager's server) whose segments must be unlinked when
    it ends, not when its parent's tracker does."""
    global _tracker_fd
    if _tracker_fd >= 0:
        # (The parent and its other children keep their tracker.)
        os.close(_tracker_fd)
        _tracker_fd = -1
    _tracked.clear()


def _tracker_send(op, name):
    if _tracker_fd < 0:
        return
    try:
        os.write(
            _tracker_fd, op + name.encode('utf-8', 'surrogateescape') + b'\n'
        )
    except OSError:
        pass


def _track(name):
    if _tracker_fd < 0 and _start_tracker() < 0:
        return
    slot = _fastmp._shm_track_add(name)
    _tracked[name] = slot
    if slot < 0:
        _tracker_send(b'+', name)


def _untrack(name):
    slot = _tracked.pop(name)
    if slot >= 0:
        _fastmp._shm_track_remove(slot, name)
    else:
        _tracker_send(b'-', name)


class SharedMemory:
    """Creates a new shared memory block or attaches to an existing
    shared memory block.

    Every shared memory block is assigned a unique name.  This enables
    one process to create a shared memory block with a particular name
    so that a different process can attach to that same shared memory
    block using that same name.

    Only the creating process tracks the block (unless ``track=False``):
    if it exits without ``unlink()``, the block is unlinked with a
    "leaked shared_memory" warning.  Attaching never unlinks.  ``close()``
    leaves the pages mapped while views of ``buf`` are alive."""

    _name = None
    _fd = -1
    _mmap = None
    _buf = None
    _flags = os.O_RDWR
    _mode = 0o600
    _prepend_leading_slash = True
    _track = True
    _size = 0

    def __init__(self, name=None, create=False, size=0, *, track=True):
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            self._flags = _O_CREX | os.O_RDWR
            if size == 0:
                raise ValueError(
                    "'size' must be a positive number different from zero"
                )
        if name is None and not self._flags & os.O_EXCL:
            raise ValueError("'name' can only be None if create=True")
        self._track = track
        excl = self._flags & os.O_EXCL
        if name is None:
            while True:
                name = _make_filename()
                try:
                    mapping = _shm_open(name, True, size, self._mode)
                except FileExistsError:
                    continue
                break
        else:
            if self._prepend_leading_slash:
                name = "/" + name
            if excl:
                mapping = _shm_open(name, True, size, self._mode)
            elif self._flags & os.O_CREAT:
                try:
                    mapping = _shm_open(name, False, 0, self._mode)
                except FileNotFoundError:
                    mapping = _shm_open(name, True, size, self._mode)
            else:
                mapping = _shm_open(name, False, 0, self._mode)
        self._name = name
        self._mmap = mapping
        self._size = mapping.size
        if create and track:
            _track(name)

    def __reduce__(self):
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self):
        return f'{self.__class__.__name__}({self.name!r}, size={self.size})'

    @property
    def buf(self):
        "A memoryview of contents of the shared memory block."
        buf = self._buf
        if buf is None and self._mmap is not None:
            # Mapped on first use: create/attach + close need no mmap.
            buf = self._buf = memoryview(self._mmap)
        return buf

    @property
    def name(self):
        "Unique name that identifies the shared memory block."
        name = self._name
        if self._prepend_leading_slash and name.startswith("/"):
            return name[1:]
        return name

    @property
    def size(self):
        "Size in bytes."
        return self._size

    def close(self):
        """Closes access to the shared memory from this instance but does
        not destroy the shared memory block.

        Views of ``buf`` made before (memoryview slices, numpy arrays) stay
        valid: the pages are unmapped when the last of them is gone."""
        buf = self._buf
        if buf is not None:
            self._buf = None
            try:
                buf.release()
            except BufferError:
                pass
        mapping = self._mmap
        if mapping is not None:
            self._mmap = None
            mapping.close()

    def unlink(self):
        """Requests that the underlying shared memory block be destroyed.

        Unlink should be called once (and only once) across all handles
        which have access to the shared memory block, even if these
        handles belong to different processes."""
        name = self._name
        if name:
            _shm_unlink(name)
            if name in _tracked:
                _untrack(name)


_encoding = "utf8"


def _slot_bytes(item, encoded):
    # The stdlib sizes a str slot from its length in characters (keeping
    # its formats), which truncates UTF-8 text longer than the slot; fastmp
    # uses the same size unless the encoded value would not fit.
    size = 8 * (len(item) // 8 + 1)
    if len(encoded) > size:
        size = 8 * (len(encoded) // 8 + 1)
    return size


class ShareableList(_fastmp._ShareableListCore):
    """Pattern for a mutable list-like object shareable via a shared
    memory block.  It differs from the built-in list type in that these
    lists can not change their overall length (i.e. no append, insert,
    etc.)

    The layout is the stdlib's, so fastmp and stdlib processes can attach
    to each other's lists.  Item reads and writes run in C; on lists made
    by fastmp a write is atomic for readers in any process, and str/bytes
    values ending in NUL bytes round-trip exactly."""

    _types_mapping = {  # noqa: RUF012 (the stdlib's class attribute)
        int: "q",
        float: "d",
        bool: "xxxxxxx?",
        str: "%ds",
        bytes: "%ds",
        type(None): "xxxxxx?x",
    }
    _alignment = 8
    _back_transforms_mapping = {  # noqa: RUF012
        0: lambda value: value,
        1: lambda value: value.rstrip(b'\x00').decode(_encoding),
        2: lambda value: value.rstrip(b'\x00'),
        3: lambda _value: None,
    }

    @staticmethod
    def _extract_recreation_code(value):
        if isinstance(value, str):
            return 1
        if isinstance(value, bytes):
            return 2
        if value is None:
            return 3
        return 0

    def __init__(self, sequence=None, *, name=None):
        if name is None or sequence is not None:
            items = list(sequence or ())
            offsets = [0]
            for item in items:
                # The stdlib looks the exact type up, so a subclass of a
                # supported type is a KeyError here (but not in __setitem__).
                self._types_mapping[type(item)]
                if isinstance(item, (str, bytes)):
                    enc = (
                        item.encode(_encoding)
                        if isinstance(item, str)
                        else item
                    )
                    slot = _slot_bytes(item, enc)
                    if len(f"{slot}s") > 8:
                        raise ValueError(
                            "bytes/str item too long for a ShareableList"
                        )
                    offsets.append(offsets[-1] + slot)
                else:
                    offsets.append(offsets[-1] + self._alignment)
            n = len(items)
            end = 8 * (n + 2) + offsets[-1] + 9 * n
            # Room after the stdlib's layout for fastmp's seqlock trailer.
            size = (end + 7) // 8 * 8 + 32
            self.shm = SharedMemory(name, create=True, size=size)
            struct.pack_into("q" * (n + 2), self.shm.buf, 0, n, *offsets)
            self._bind(self.shm._mmap, True)
            for i, item in enumerate(items):
                self[i] = item
        else:
            self.shm = SharedMemory(name)
            self._bind(self.shm._mmap, False)
        n = len(self)
        self._list_len = n
        self._allocated_offsets = list(
            struct.unpack_from("q" * (n + 1), self.shm.buf, 8)
        )

    def _get_packing_format(self, position):
        "Gets the packing format for a single value stored in the list."
        n = self._list_len
        if position < 0:
            position += n
        if not 0 <= position < n:
            raise IndexError("Requested position out of range.")
        raw = bytes(
            self.shm.buf[
                self._offset_packing_formats
                + 8 * position : self._offset_packing_formats
                + 8 * position
                + 8
            ]
        )
        return raw.rstrip(b'\x00').decode(_encoding)

    def __reduce__(self):
        return functools.partial(self.__class__, name=self.shm.name), ()

    def __repr__(self):
        return (
            f'{self.__class__.__name__}({list(self)}, name={self.shm.name!r})'
        )

    @property
    def format(self):
        "The struct packing format used by all currently stored items."
        return "".join(
            self._get_packing_format(i) for i in range(self._list_len)
        )

    @property
    def _format_size_metainfo(self):
        return "q" * (self._list_len + 1)

    @property
    def _format_packing_metainfo(self):
        return "8s" * self._list_len

    @property
    def _format_back_transform_codes(self):
        return "b" * self._list_len

    @property
    def _offset_data_start(self):
        return (self._list_len + 2) * 8

    @property
    def _offset_packing_formats(self):
        return self._offset_data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self):
        return self._offset_packing_formats + self._list_len * 8

    def count(self, value):
        "L.count(value) -> integer -- return number of occurrences of value."
        return sum(1 for entry in self if entry == value)

    def index(self, value):
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        for position, entry in enumerate(self):
            if entry == value:
                return position
        raise ValueError(f"{value!r} not in this container")

    __class_getitem__ = classmethod(types.GenericAlias)
