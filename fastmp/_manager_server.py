"""The wire side of fastmp's managers: what travels (Token, the request
and reply messages, errors), the connections and their handshake, and the
server that runs in a manager's process (``Server``, and the
``SharedMemoryServer`` of SharedMemoryManager).  ``fastmp.managers`` is
the public module; it re-exports these names.

The protocol is described in ``fastmp/managers.py``'s docstring.
"""

import array
import os
import socket
import sys
import threading
import time
from multiprocessing import process, util
from multiprocessing.context import reduction
from os import getpid

from . import connection

__all__ = []


def _format_exc():
    import traceback

    return traceback.format_exc()


#
# What the server sends back: picklable stand-ins
#


def _reduce_array(a):
    return array.array, (a.typecode, a.tobytes())


def _rebuild_as_list(obj):
    return list, (list(obj),)


reduction.register(array.array, _reduce_array)
for _view in (type({}.keys()), type({}.values()), type({}.items())):
    reduction.register(_view, _rebuild_as_list)
del _view


#
# Token: names a shared object (typeid, server address, id)
#


def _wire_token_class():
    # The class a peer finds at multiprocessing.managers.Token: this one
    # when fastmp stands in for multiprocessing, the stdlib's otherwise.
    import importlib

    return importlib.import_module("multiprocessing.managers").Token


class Token:
    """Type to uniquely identify a shared object"""

    __slots__ = ("typeid", "address", "id")

    def __init__(self, typeid, address, id):
        self.typeid = typeid
        self.address = address
        self.id = id

    def __getstate__(self):
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state):
        (self.typeid, self.address, self.id) = state

    def __reduce__(self):
        # A token is part of the wire protocol: it travels as the stdlib's
        # multiprocessing.managers.Token, which any peer can rebuild.
        cls = _wire_token_class()
        return cls, (self.typeid, self.address, self.id)

    def __repr__(self):
        return "%s(typeid=%r, address=%r, id=%r)" % (
            self.__class__.__name__,
            self.typeid,
            self.address,
            self.id,
        )


# Pickled by that name under ``python -m fastmp`` (where it is this class).
Token.__module__ = "multiprocessing.managers"
Token.__qualname__ = "Token"


#
# Requests to a server, and errors coming back
#


def dispatch(c, id, methodname, args=(), kwds={}):  # noqa: B006
    """Send a message to manager using connection `c` and return response"""
    c.send((id, methodname, args, kwds))
    kind, result = c.recv()
    if kind == "#RETURN":
        return result
    raise convert_to_error(kind, result)


class RemoteTraceback(Exception):
    """The traceback, in the manager's server, of an error a method of a
    shared object raised: the ``__cause__`` of that error in the caller."""

    def __str__(self):
        return '\n"""\n%s"""' % self.args[0]


def convert_to_error(kind, result):
    if kind == "#ERROR":
        # The error itself (its type and arguments, as the stdlib sends
        # it); fastmp's server also sends its traceback's text along.
        state = getattr(result, "__dict__", None)
        if state:
            tb = state.pop("_fastmp_traceback", None)
            if isinstance(tb, str):
                result.__cause__ = RemoteTraceback(tb)
        return result
    if kind in ("#TRACEBACK", "#UNSERIALIZABLE"):
        if not isinstance(result, str):
            raise TypeError(
                f"Result {result!r} (kind '{kind}') type is "
                f"{type(result)}, not str"
            )
        if kind == "#UNSERIALIZABLE":
            return RemoteError("Unserializable message: %s\n" % result)
        return RemoteError(result)
    return ValueError(f"Unrecognized message type {kind!r}")


class RemoteError(Exception):
    """An error raised in the manager's server, with its traceback text."""

    def __str__(self):
        return "\n" + "-" * 75 + "\n" + str(self.args[0]) + "-" * 75


def all_methods(obj):
    """Return a list of names of methods of `obj`"""
    return [name for name in dir(obj) if callable(getattr(obj, name))]


def public_methods(obj):
    """Return a list of names of methods of `obj` which do not start with
    '_'"""
    return [name for name in all_methods(obj) if name[0] != "_"]


#
# Connections
#


def _request_reply(conn):
    """Set up a connection to or from a server, whose requests and
    replies strictly alternate."""
    # The reader sleeps in the read until the other's message comes: no
    # spinning before it.  A server thread waits through its client's own
    # work between requests, and spinning through that takes the CPU the
    # client needs: on a busy machine that made a round trip several
    # times slower.  That read also takes the whole of a small message
    # with its header (reading ahead: nobody else reads this fd).  (A
    # client turns the watch back on: see _client.)
    conn._spin = False
    # Messages are small: send each at once instead of waiting for the
    # peer's ACK of the previous one.
    try:
        s = socket.socket(fileno=conn.fileno())
    except OSError:
        return
    try:
        if s.family in (socket.AF_INET, socket.AF_INET6):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    finally:
        s.detach()


def _client(address, authkey):
    """A pickle connection to the server at address, authenticated."""
    c = connection.SocketClient(address)
    _request_reply(c)
    # A client, though, waits only for the server's reply, which usually
    # comes within microseconds: it watches for it first (within the
    # connection's learned spin budget: none on one CPU, little when
    # replies take long) and spares the sleep and wake-up that dominate
    # a round trip on an idle machine.
    c._spin = True
    if authkey is not None:
        try:
            connection.answer_challenge(c, authkey)
            connection.deliver_challenge(c, authkey)
        except BaseException:
            c.close()
            raise
    return c


class _Listener(connection.Listener):
    """The server's listener: the handshake happens in the thread that
    serves the connection (a slow peer never holds up accept())."""

    def accept(self):
        c = connection.Listener.accept(self)
        _request_reply(c)
        return c


def _xml_client(address, authkey=None):
    return connection.ConnectionWrapper(
        _client(address, authkey), connection._xml_dumps, connection._xml_loads
    )


class _XmlListener(_Listener):
    def accept(self):
        return connection.ConnectionWrapper(
            _Listener.accept(self),
            connection._xml_dumps,
            connection._xml_loads,
        )


def _pickle_client(address, authkey=None):
    return _client(address, authkey)


# serializer name -> (Listener, Client), as the stdlib has it.
listener_client = {
    "pickle": (_Listener, _pickle_client),
    "xmlrpclib": (_XmlListener, _xml_client),
}


def _server_handshake(c, authkey, timeout):
    """deliver_challenge then answer_challenge, each read within the
    deadline: AuthenticationError, or EOFError/OSError, on failure."""
    deadline = time.monotonic() + timeout
    raw = getattr(c, "_conn", c)  # (an xmlrpc wrapper: its connection)

    def wait():
        left = deadline - time.monotonic()
        if left <= 0 or not raw.poll(left):
            raise connection.AuthenticationError(
                "no answer to the challenge within %ss" % timeout
            )

    # deliver_challenge
    message = b"{sha256}" + os.urandom(connection.MESSAGE_LENGTH)
    raw.send_bytes(connection._CHALLENGE + message)
    wait()
    response = raw.recv_bytes(connection._AUTH_MAX)
    try:
        connection._check_response(authkey, message, response)
    except connection.AuthenticationError:
        raw.send_bytes(connection._FAILURE)
        raise
    raw.send_bytes(connection._WELCOME)
    # answer_challenge
    wait()
    message = raw.recv_bytes(connection._AUTH_MAX)
    if not message.startswith(connection._CHALLENGE):
        raise connection.AuthenticationError(
            f"Protocol error, expected challenge: {message=}"
        )
    message = message[len(connection._CHALLENGE) :]
    if len(message) < 20:
        raise connection.AuthenticationError(
            f"challenge too short: {len(message)} bytes"
        )
    raw.send_bytes(connection._make_response(authkey, message))
    wait()
    if raw.recv_bytes(connection._AUTH_MAX) != connection._WELCOME:
        raise connection.AuthenticationError("digest sent was rejected")


#
# Server which is run in a process controlled by a manager
#


class Server:
    """Server class which runs in a process controlled by a manager object"""

    public = [
        "shutdown",
        "create",
        "accept_connection",
        "get_methods",
        "debug_info",
        "number_of_objects",
        "dummy",
        "incref",
        "decref",
    ]

    def __init__(self, registry, address, authkey, serializer):
        if not isinstance(authkey, bytes):
            raise TypeError(
                f"Authkey {authkey!r} is type {type(authkey)!s}, not bytes"
            )
        self.registry = registry
        self.authkey = process.AuthenticationString(authkey)
        Listener = listener_client[serializer][0]
        self.listener = Listener(address=address, backlog=128)
        self.address = self.listener.address
        # ident -> (object, exposed names, method_to_typeid); '0' is None.
        self.id_to_obj = {"0": (None, (), None)}
        self.id_to_refcount = {}
        # Objects referred to only by proxies that live in this server
        # (a managed list holding a managed dict).
        self.id_to_local_proxy_obj = {}
        # ident -> replica of a container served without a round trip
        # (fastmp._manager_fast); its segments go with the object.
        self.id_to_replica = {}
        self.mutex = threading.Lock()

    # Seconds a connecting peer has to complete the HMAC handshake before
    # the server hangs up on it (a half-open or silent client holds no
    # thread longer than this).
    handshake_timeout = 20.0

    def serve_forever(self):
        """Run the server forever"""
        self.stop_event = threading.Event()
        process.current_process()._manager_server = self
        try:
            accepter = threading.Thread(target=self.accepter, daemon=True)
            accepter.start()
            try:
                while not self.stop_event.is_set():
                    self.stop_event.wait(1)
            except (KeyboardInterrupt, SystemExit):
                pass
        finally:
            self._release_replicas()
            if sys.stdout != sys.__stdout__:
                util.debug("resetting stdout, stderr")
                sys.stdout = sys.__stdout__
                sys.stderr = sys.__stderr__
            sys.exit(0)

    def _release_replicas(self):
        from . import _manager_fast

        while self.id_to_replica:
            _ident, r = self.id_to_replica.popitem()
            _manager_fast.server_release(r)

    def _create_replicated(self, typeid, args, kwds):
        """The referent of a container served without a round trip, or
        None for a type served the ordinary way."""
        from . import _manager_fast

        if not _manager_fast.replicated(
            self.address, typeid, self.registry[typeid]
        ):
            return None
        obj, r = _manager_fast.server_create(self, typeid, args, kwds)
        if r is not None:
            self.id_to_replica["%x" % id(obj)] = r
        return obj

    def accepter(self):
        while True:
            try:
                c = self.listener.accept()
            except OSError:
                if self.listener._listener is None:
                    return
                # Out of fds, say: do not spin on the error.
                time.sleep(0.01)
                continue
            except Exception:  # noqa: BLE001
                continue
            t = threading.Thread(
                target=self.handle_request, args=(c,), daemon=True
            )
            t.start()

    def _handle_request(self, c):
        request = None
        try:
            _server_handshake(c, self.authkey, self.handshake_timeout)
        except Exception:  # noqa: BLE001
            # Not authenticated: nothing more is read from this peer.
            return
        try:
            request = c.recv()
            _ignore, funcname, args, kwds = request
            assert funcname in self.public, "%r unrecognized" % funcname
            func = getattr(self, funcname)
        except Exception:  # noqa: BLE001
            msg = ("#TRACEBACK", _format_exc())
        else:
            try:
                result = func(c, *args, **kwds)
            except Exception:  # noqa: BLE001
                msg = ("#TRACEBACK", _format_exc())
            else:
                msg = ("#RETURN", result)
        try:
            c.send(msg)
        except Exception as e:  # noqa: BLE001
            try:
                c.send(("#TRACEBACK", _format_exc()))
            except Exception:  # noqa: BLE001
                pass
            util.info("Failure to send message: %r", msg)
            util.info(" ... request was %r", request)
            util.info(" ... exception was %r", e)

    def handle_request(self, conn):
        """Handle a new connection"""
        try:
            self._handle_request(conn)
        except SystemExit:
            # serve_client() ends its thread with SystemExit on EOF.
            pass
        finally:
            conn.close()

    def serve_client(self, conn):
        """Handle requests from the proxies in a particular process/thread"""
        util.debug(
            "starting server thread to service %r",
            threading.current_thread().name,
        )
        recv = conn.recv
        send = conn.send
        id_to_obj = self.id_to_obj
        is_set = self.stop_event.is_set
        while not is_set():
            methodname = obj = ident = None
            try:
                request = recv()
                ident, methodname, args, kwds = request
                try:
                    obj, exposed, gettypeid = id_to_obj[ident]
                except KeyError as ke:
                    try:
                        obj, exposed, gettypeid = self.id_to_local_proxy_obj[
                            ident
                        ]
                    except KeyError:
                        raise ke from None
                if methodname not in exposed:
                    raise AttributeError(
                        "method %r of %r object is not in exposed=%r"
                        % (methodname, type(obj), exposed)
                    )
                function = getattr(obj, methodname)
                try:
                    res = function(*args, **kwds)
                except Exception as e:  # noqa: BLE001
                    msg = ("#ERROR", e)
                    try:
                        # Pickled with the error's other attributes (a
                        # stdlib peer just gets one attribute more).
                        e._fastmp_traceback = _format_exc()
                    except Exception:  # noqa: BLE001  (no __dict__)
                        pass
                else:
                    typeid = gettypeid and gettypeid.get(methodname)
                    if typeid:
                        rident, rexposed = self.create(conn, typeid, res)
                        token = Token(typeid, self.address, rident)
                        msg = ("#PROXY", (rexposed, token))
                    else:
                        msg = ("#RETURN", res)
            except AttributeError:
                if methodname is None:
                    msg = ("#TRACEBACK", _format_exc())
                else:
                    try:
                        fallback = self.fallback_mapping[methodname]
                        msg = (
                            "#RETURN",
                            fallback(self, conn, ident, obj, *args, **kwds),
                        )
                    except Exception:  # noqa: BLE001
                        msg = ("#TRACEBACK", _format_exc())
            except EOFError:
                util.debug(
                    "got EOF -- exiting thread serving %r",
                    threading.current_thread().name,
                )
                sys.exit(0)
            except Exception:  # noqa: BLE001
                msg = ("#TRACEBACK", _format_exc())
            try:
                try:
                    send(msg)
                except Exception:  # noqa: BLE001
                    send(("#UNSERIALIZABLE", _format_exc()))
            except Exception as e:  # noqa: BLE001
                util.info(
                    "exception in thread serving %r",
                    threading.current_thread().name,
                )
                util.info(" ... message was %r", msg)
                util.info(" ... exception was %r", e)
                conn.close()
                sys.exit(1)

    def fallback_getvalue(self, conn, ident, obj):
        return obj

    def fallback_str(self, conn, ident, obj):
        return str(obj)

    def fallback_repr(self, conn, ident, obj):
        return repr(obj)

    fallback_mapping = {
        "__str__": fallback_str,
        "__repr__": fallback_repr,
        "#GETVALUE": fallback_getvalue,
    }

    def dummy(self, c):
        pass

    def debug_info(self, c):
        """Return some info --- useful to spot problems with refcounting"""
        with self.mutex:
            result = []
            for ident in sorted(self.id_to_refcount):
                if ident != "0":
                    result.append(
                        "  %s:       refcount=%s\n    %s"
                        % (
                            ident,
                            self.id_to_refcount[ident],
                            str(self.id_to_obj[ident][0])[:75],
                        )
                    )
            return "\n".join(result)

    def number_of_objects(self, c):
        """Number of shared objects"""
        return len(self.id_to_refcount)

    def shutdown(self, c):
        """Shutdown this process"""
        try:
            util.debug("manager received shutdown message")
            c.send(("#RETURN", None))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            self.stop_event.set()

    def create(self, c, typeid, /, *args, **kwds):
        """Create a new shared object and return its id"""
        with self.mutex:
            callable, exposed, method_to_typeid, _proxytype = self.registry[
                typeid
            ]
            obj = self._create_replicated(typeid, args, kwds)
            if obj is not None:
                pass
            elif callable is None:
                if kwds or (len(args) != 1):
                    raise ValueError(
                        "Without callable, must have one non-keyword argument"
                    )
                obj = args[0]
            else:
                obj = callable(*args, **kwds)
            if exposed is None:
                exposed = public_methods(obj)
            if method_to_typeid is not None:
                if not isinstance(method_to_typeid, dict):
                    raise TypeError(
                        f"Method_to_typeid {method_to_typeid!r}: type "
                        f"{type(method_to_typeid)!s}, not dict"
                    )
                exposed = list(exposed) + list(method_to_typeid)
            # A string: xmlrpc has 32-bit integers only.
            ident = "%x" % id(obj)
            util.debug("%r callable returned object with id %r", typeid, ident)
            self.id_to_obj[ident] = (obj, set(exposed), method_to_typeid)
            if ident not in self.id_to_refcount:
                self.id_to_refcount[ident] = 0
        self.incref(c, ident)
        return ident, tuple(exposed)

    def get_methods(self, c, token):
        """Return the methods of the shared object indicated by token"""
        return tuple(self.id_to_obj[token.id][1])

    def accept_connection(self, c, name):
        """Spawn a new thread to serve this connection"""
        threading.current_thread().name = name
        c.send(("#RETURN", None))
        self.serve_client(c)

    def incref(self, c, ident):
        with self.mutex:
            try:
                self.id_to_refcount[ident] += 1
            except KeyError:
                # Only proxies inside the server referred to it: a new
                # outside reference makes it tracked again.
                if ident not in self.id_to_local_proxy_obj:
                    raise
                self.id_to_refcount[ident] = 1
                self.id_to_obj[ident] = self.id_to_local_proxy_obj[ident]
                util.debug("Server re-enabled tracking & INCREF %r", ident)

    def decref(self, c, ident):
        if (
            ident not in self.id_to_refcount
            and ident in self.id_to_local_proxy_obj
        ):
            util.debug("Server DECREF skipping %r", ident)
            return
        with self.mutex:
            if self.id_to_refcount[ident] <= 0:
                raise AssertionError(
                    f"Id {ident!s} ({self.id_to_obj[ident]!r}) has refcount "
                    f"{self.id_to_refcount[ident]:n}, not 1+"
                )
            self.id_to_refcount[ident] -= 1
            if self.id_to_refcount[ident] == 0:
                del self.id_to_refcount[ident]
        if ident not in self.id_to_refcount:
            # In two steps: dropping the object may drop proxies it holds,
            # whose decref takes the mutex again.
            self.id_to_obj[ident] = (None, (), None)
            util.debug("disposing of obj with id %r", ident)
            with self.mutex:
                del self.id_to_obj[ident]
                r = None
                if ident not in self.id_to_local_proxy_obj:
                    r = self.id_to_replica.pop(ident, None)
            if r is not None:
                from . import _manager_fast

                _manager_fast.server_release(r)


#
# The server of SharedMemoryManager
#


class _SharedMemoryTracker:
    "Manages one or more shared memory segments."

    def __init__(self, name, segment_names=None):
        self.shared_memory_context_name = name
        self.segment_names = [] if segment_names is None else segment_names

    def register_segment(self, segment_name):
        "Adds the supplied shared memory block name to tracker."
        util.debug(f"Register segment {segment_name!r} in pid {getpid()}")
        self.segment_names.append(segment_name)

    def destroy_segment(self, segment_name):
        """Calls unlink() on the shared memory block with the supplied name
        and removes it from the list of blocks being tracked."""
        from . import shared_memory

        util.debug(f"Destroy segment {segment_name!r} in pid {getpid()}")
        self.segment_names.remove(segment_name)
        segment = shared_memory.SharedMemory(segment_name)
        segment.close()
        segment.unlink()

    def unlink(self):
        "Calls destroy_segment() on all tracked shared memory blocks."
        for segment_name in self.segment_names[:]:
            self.destroy_segment(segment_name)

    def __del__(self):
        util.debug(f"Call {self.__class__.__name__}.__del__ in {getpid()}")
        self.unlink()

    def __getstate__(self):
        return (self.shared_memory_context_name, self.segment_names)

    def __setstate__(self, state):
        self.__init__(*state)


class SharedMemoryServer(Server):
    public = Server.public + [
        "track_segment",
        "release_segment",
        "list_segments",
    ]

    def __init__(self, *args, **kwargs):
        Server.__init__(self, *args, **kwargs)
        address = self.address
        # A Linux abstract socket's address can be bytes.
        if isinstance(address, bytes):
            address = os.fsdecode(address)
        self.shared_memory_context = _SharedMemoryTracker(
            f"shm_{address}_{getpid()}"
        )
        util.debug(f"SharedMemoryServer started by pid {getpid()}")

    def create(self, c, typeid, /, *args, **kwargs):
        """Create a new distributed-shared object (not backed by a shared
        memory block) and return its id to be used in a Proxy Object."""
        if hasattr(self.registry[typeid][-1], "_shared_memory_proxy"):
            kwargs["shared_memory_context"] = self.shared_memory_context
        return Server.create(self, c, typeid, *args, **kwargs)

    def shutdown(self, c):
        "Call unlink() on all tracked shared memory, terminate the Server."
        self.shared_memory_context.unlink()
        return Server.shutdown(self, c)

    def track_segment(self, c, segment_name):
        "Adds the supplied shared memory block name to Server's tracker."
        self.shared_memory_context.register_segment(segment_name)

    def release_segment(self, c, segment_name):
        """Calls unlink() on the shared memory block with the supplied name
        and removes it from the tracker instance inside the Server."""
        self.shared_memory_context.destroy_segment(segment_name)

    def list_segments(self, c):
        """Returns a list of names of shared memory blocks that the Server
        is currently tracking."""
        return self.shared_memory_context.segment_names
