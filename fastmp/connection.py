"""Connections, Pipe, Listener/Client and wait (multiprocessing.connection).

``Connection`` is a C type (``fastmp._fastmp.Connection``) over a file
descriptor that speaks the stdlib's wire format byte for byte, so either
end of a socket or pipe may be a stdlib Connection.  Listener/Client and
the authentication handshake are Python (they are not on the data path)
but hand out fastmp Connections.  The handshake never unpickles anything
and caps every message it reads at 256 bytes.
"""

import hmac
import os
import socket
import sys
import tempfile
import time
from multiprocessing import AuthenticationError, BufferTooShort, util  # noqa
from multiprocessing.connection import wait
from multiprocessing.context import reduction

from ._fastmp import Connection

__all__ = ['Client', 'Listener', 'Pipe', 'wait']

BUFSIZE = 8192
CONNECTION_TIMEOUT = 20.0

default_family = 'AF_INET'
families = ['AF_INET']
if hasattr(socket, 'AF_UNIX'):
    default_family = 'AF_UNIX'
    families += ['AF_UNIX']


def arbitrary_address(family):
    """Return an arbitrary free address for the given family"""
    if family == 'AF_INET':
        return ('localhost', 0)
    if family == 'AF_UNIX':
        return tempfile.mktemp(prefix='listener-', dir=util.get_temp_dir())
    raise ValueError('unrecognized family')


def _validate_family(family):
    if family not in families:
        raise ValueError(f'Family {family} is not recognized.')


def address_type(address):
    """Return the type of the address: 'AF_INET' or 'AF_UNIX'."""
    if type(address) is tuple:
        return 'AF_INET'
    if type(address) is str and address.startswith('\\\\'):
        return 'AF_PIPE'
    if type(address) is str or util.is_abstract_socket_namespace(address):
        return 'AF_UNIX'
    raise ValueError(f'address type of {address!r} unrecognized')


# Send buffer of each end of a duplex Pipe.  The default (about 200 KiB)
# makes a 1 MiB message cost the sender and the receiver a sleep and a
# wake-up every 200 KiB; with room for the whole message it is one write
# and one read.  It is a limit, not an allocation (the kernel caps it at
# net.core.wmem_max).  One-way Pipes are left alone: a bigger os.pipe()
# buffer counts against a per-user limit.
_PIPE_SNDBUF = 1 << 20


def Pipe(duplex=True):
    """Returns pair of connection objects at either end of a pipe"""
    if duplex:
        s1, s2 = socket.socketpair()
        for s in (s1, s2):
            s.setblocking(True)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PIPE_SNDBUF)
            except OSError:
                pass
        return Connection(s1.detach()), Connection(s2.detach())
    rfd, wfd = os.pipe()
    return (Connection(rfd, writable=False), Connection(wfd, readable=False))


class Listener:
    """Returns a listener object.

    A wrapper for a bound socket which is 'listening' for connections.
    """

    def __init__(self, address=None, family=None, backlog=1, authkey=None):
        family = (
            family or (address and address_type(address)) or default_family
        )
        address = address or arbitrary_address(family)
        _validate_family(family)
        self._listener = SocketListener(address, family, backlog)
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError('authkey should be a byte string')
        self._authkey = authkey

    def accept(self):
        """Accept a connection on the bound socket; returns a Connection."""
        if self._listener is None:
            raise OSError('listener is closed')
        c = self._listener.accept()
        if self._authkey is not None:
            deliver_challenge(c, self._authkey)
            answer_challenge(c, self._authkey)
        return c

    def close(self):
        """Close the bound socket."""
        listener = self._listener
        if listener is not None:
            self._listener = None
            listener.close()

    @property
    def address(self):
        return self._listener._address

    @property
    def last_accepted(self):
        return self._listener._last_accepted

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


def Client(address, family=None, authkey=None):
    """Returns a connection to the address of a `Listener`"""
    family = family or address_type(address)
    _validate_family(family)
    c = SocketClient(address)
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError('authkey should be a byte string')
    if authkey is not None:
        answer_challenge(c, authkey)
        deliver_challenge(c, authkey)
    return c


class SocketListener:
    """A socket bound to an address and listening."""

    def __init__(self, address, family, backlog=1):
        self._socket = socket.socket(getattr(socket, family))
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.setblocking(True)
            self._socket.bind(address)
            self._socket.listen(backlog)
            self._address = self._socket.getsockname()
        except OSError:
            self._socket.close()
            raise
        self._family = family
        self._last_accepted = None
        if family == 'AF_UNIX' and not util.is_abstract_socket_namespace(
            address
        ):
            self._unlink = util.Finalize(
                self, os.unlink, args=(address,), exitpriority=0
            )
        else:
            self._unlink = None

    def accept(self):
        s, self._last_accepted = self._socket.accept()
        s.setblocking(True)
        return Connection(s.detach())

    def close(self):
        try:
            self._socket.close()
        finally:
            unlink = self._unlink
            if unlink is not None:
                self._unlink = None
                unlink()


def SocketClient(address):
    """Return a Connection connected to the socket at `address`."""
    family = address_type(address)
    with socket.socket(getattr(socket, family)) as s:
        s.setblocking(True)
        s.connect(address)
        return Connection(s.detach())


#
# Authentication: the stdlib's HMAC challenge/response.
#
# Current protocol (3.12+): the challenge is b'#CHALLENGE#' + b'{digest}' +
# 40 random bytes; the answer is b'{digest}' + HMAC(authkey, challenge
# body).  Legacy protocol (3.11 and older): a 20-byte challenge body and a
# bare 16-byte HMAC-MD5 answer.  Both ends here speak the current protocol
# and accept a legacy peer, as the 3.12+ stdlib does.
#

MESSAGE_LENGTH = 40
_CHALLENGE = b'#CHALLENGE#'
_WELCOME = b'#WELCOME#'
_FAILURE = b'#FAILURE#'
_ALLOWED_DIGESTS = frozenset(
    {b'md5', b'sha256', b'sha384', b'sha3_256', b'sha3_384'}
)
_MAX_DIGEST_LEN = max(len(d) for d in _ALLOWED_DIGESTS)
_LEGACY_LENGTHS = (20, 16)  # legacy challenge body, bare HMAC-MD5
_AUTH_MAX = 256  # cap on any message read before auth


def _split_digest(message):
    """(digest name, payload); '' as the name means legacy HMAC-MD5."""
    if len(message) in _LEGACY_LENGTHS:
        return '', message
    if message.startswith(b'{'):
        end = message.find(b'}', 1, _MAX_DIGEST_LEN + 2)
        if end > 0 and message[1:end] in _ALLOWED_DIGESTS:
            return message[1:end].decode('ascii'), message[end + 1 :]
    raise AuthenticationError(
        'unsupported message length, missing digest prefix, '
        f'or unsupported digest: {message=}'
    )


def _make_response(authkey, message):
    name = _split_digest(message)[0]
    if not name:
        try:
            return hmac.new(authkey, message, 'md5').digest()
        except ValueError:  # no MD5 (FIPS): answer with SHA-256
            name = 'sha256'
    mac = hmac.new(authkey, message, name).digest()
    return b'{' + name.encode('ascii') + b'}' + mac


def _check_response(authkey, message, response):
    name, mac = _split_digest(response)
    name = name or 'md5'
    try:
        expected = hmac.new(authkey, message, name).digest()
    except ValueError:
        raise AuthenticationError(
            f'response_digest={name!r} unsupported'
        ) from None
    if len(expected) != len(mac):
        raise AuthenticationError(
            f'expected {name!r} of length {len(expected)} got {len(mac)}'
        )
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError('digest received was wrong')


def deliver_challenge(connection, authkey, digest_name='sha256'):
    if not isinstance(authkey, bytes):
        raise ValueError(  # noqa: TRY004  (the stdlib raises ValueError)
            f"Authkey must be bytes, not {type(authkey)!s}"
        )
    message = (
        b'{' + digest_name.encode('ascii') + b'}' + os.urandom(MESSAGE_LENGTH)
    )
    connection.send_bytes(_CHALLENGE + message)
    response = connection.recv_bytes(_AUTH_MAX)
    try:
        _check_response(authkey, message, response)
    except AuthenticationError:
        connection.send_bytes(_FAILURE)
        raise
    connection.send_bytes(_WELCOME)


def answer_challenge(connection, authkey):
    if not isinstance(authkey, bytes):
        raise ValueError(  # noqa: TRY004  (the stdlib raises ValueError)
            f"Authkey must be bytes, not {type(authkey)!s}"
        )
    message = connection.recv_bytes(_AUTH_MAX)
    if not message.startswith(_CHALLENGE):
        raise AuthenticationError(
            f'Protocol error, expected challenge: {message=}'
        )
    message = message[len(_CHALLENGE) :]
    if len(message) < 20:
        raise AuthenticationError(f'challenge too short: {len(message)} bytes')
    connection.send_bytes(_make_response(authkey, message))
    if connection.recv_bytes(_AUTH_MAX) != _WELCOME:
        raise AuthenticationError('digest sent was rejected')


#
# xmlrpc serialisation, as the stdlib offers it
#


class ConnectionWrapper:
    def __init__(self, conn, dumps, loads):
        self._conn = conn
        self._dumps = dumps
        self._loads = loads
        for attr in ('fileno', 'close', 'poll', 'recv_bytes', 'send_bytes'):
            setattr(self, attr, getattr(conn, attr))

    def send(self, obj):
        self._conn.send_bytes(self._dumps(obj))

    def recv(self):
        return self._loads(self._conn.recv_bytes())


def _xml_dumps(obj):
    import xmlrpc.client

    return xmlrpc.client.dumps((obj,), None, None, None, 1).encode('utf-8')


def _xml_loads(s):
    import xmlrpc.client

    (obj,), _method = xmlrpc.client.loads(s.decode('utf-8'))
    return obj


class XmlListener(Listener):
    def accept(self):
        obj = Listener.accept(self)
        return ConnectionWrapper(obj, _xml_dumps, _xml_loads)


def XmlClient(*args, **kwds):
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)


#
# Pickling: a Connection travels as a duplicated fd (passed directly while
# spawning a child, through the resource sharer otherwise).
#


def reduce_connection(conn):
    df = reduction.DupFd(conn.fileno())
    return rebuild_connection, (df, conn.readable, conn.writable)


def rebuild_connection(df, readable, writable):
    return Connection(df.detach(), readable, writable)


reduction.register(Connection, reduce_connection)

# Time helpers the stdlib module exposes (used by some callers).


def _init_timeout(timeout=CONNECTION_TIMEOUT):
    return time.monotonic() + timeout


def _check_timeout(t):
    return time.monotonic() > t


if sys.platform == 'win32':  # pragma: no cover
    raise ImportError('fastmp.connection is POSIX-only')
