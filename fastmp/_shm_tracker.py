"""The shared-memory tracker: unlinks what a creator left behind.

fastmp.shared_memory starts one per creating process, as
``python -I -S <this file>``, the first time that process creates a
tracked segment.  The tracker needs nothing but the stdlib (it does not
import fastmp: ``-S`` leaves site-packages out).  It gets:

* on stdin, the read end of a pipe whose write end the creator (and its
  fork children) hold; lines ``+name`` / ``-name`` register and forget
  names that do not fit the table;
* on fd 3, the table: a memfd of 512-byte slots that the C core fills
  (``_shm_track_add``, see src/shm.c): a slot whose first byte is 1 holds
  a NUL-terminated name from byte 4 on.

When every holder of the pipe's write end is gone (the creator and its
fork children exited, however they died), stdin ends: the tracker unlinks
the names still registered and warns once, in the stdlib resource
tracker's words.  It started with SIGINT and SIGTERM blocked, so Ctrl-C
sent to the process group does not stop the cleanup.
"""

import _posixshmem
import mmap
import os
import sys

SLOT = 512
TABLE_FD = 3


def _decode(raw):
    return raw.decode("utf-8", "surrogateescape")


def registered(lines, table):
    """The names still registered: the pipe's lines, then the table."""
    names = set()
    for line in lines:
        name = _decode(line[1:].rstrip(b"\n"))
        if line[:1] == b"+":
            names.add(name)
        elif line[:1] == b"-":
            names.discard(name)
    for off in range(0, len(table), SLOT):
        if table[off] == 1:
            end = table.find(b"\0", off + 4, off + SLOT)
            if end > off + 4:
                names.add(_decode(table[off + 4 : end]))
    return names


def main():
    lines = list(sys.stdin.buffer)
    with mmap.mmap(TABLE_FD, 0, access=mmap.ACCESS_READ) as table:
        names = registered(lines, table)
    os.close(TABLE_FD)
    n = 0
    for name in sorted(names):
        try:
            _posixshmem.shm_unlink(name)
            n += 1
        except OSError:
            pass
    if n:
        sys.stderr.write(
            "fastmp.shared_memory: UserWarning: resource_tracker: There "
            "appear to be %d leaked shared_memory objects to clean up at "
            "shutdown\n" % n
        )
        sys.stderr.flush()


if __name__ == "__main__":
    main()
