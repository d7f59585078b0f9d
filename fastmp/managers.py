"""Managers: a server process holding Python objects, reached through
proxies (the stdlib's ``multiprocessing.managers``).

The server and the proxies are fastmp's: every message is one pickle
(fastmp's pickler, ``fastmp._fastmp._dumps``/``_loads`` through a fastmp
Connection's ``send``/``recv``) in one ``send_bytes``/``recv_bytes``.  The
messages are the stdlib's, so a stdlib client can use a fastmp server and
a fastmp client a stdlib server, locally or over TCP:

* a connection starts with the stdlib's HMAC challenge, both ways (the
  3.12+ digest-prefixed dialect, and the legacy HMAC-MD5 one of 3.11 and
  older peers); the server reads nothing but those short raw messages
  before the peer is authenticated (no pickle is loaded, no message longer
  than 256 bytes is accepted) and gives a peer ``Server.handshake_timeout``
  seconds to complete it;
* then ``(None, function, args, kwds)`` for the server's public functions
  (create, incref, decref, accept_connection ...), answered by
  ``('#RETURN', result)`` or ``('#TRACEBACK', text)``;
* a connection that ``accept_connection`` turned into a proxy channel
  carries ``(ident, method, args, kwds)``, answered by ``('#RETURN',
  value)``, ``('#ERROR', exception)``, ``('#PROXY', (exposed, token))``,
  ``('#TRACEBACK', text)`` or ``('#UNSERIALIZABLE', text)``.

TCP connections (a manager at ``('host', port)``) set TCP_NODELAY.

The 3.14 additions are here on every Python: the ``set`` type, list
``clear``/``copy``, dict ``|``, ``|=``, ``fromkeys`` and ``reversed``.
``reversed()`` of a dict or list proxy gives an iterator proxy (the
stdlib's server cannot send the reverse iterator back).

The proxy type of each SyncManager container (``DictProxy``,
``ListProxy``, ``NamespaceProxy`` ...) is looked up in the registry when a
proxy is made, so a container type can be served another way by
registering another proxy type.
"""

import array
import collections.abc
import queue
import signal
import threading
import types
from multiprocessing import process, util
from multiprocessing.context import ProcessError, get_spawning_popen
from os import getpid

from . import _fastmp, _manager_fast, connection, synchronize
from ._manager_server import (  # noqa: F401  (the stdlib module's names)
    RemoteError,
    RemoteTraceback,
    Server,
    SharedMemoryServer,
    Token,
    all_methods,
    convert_to_error,
    dispatch,
    listener_client,
    public_methods,
)

_loads = _fastmp._loads

__all__ = [
    "BaseManager",
    "SyncManager",
    "BaseProxy",
    "Token",
    "SharedMemoryManager",
]

# Public classes defined with the server, named as this module's.
for _cls in (RemoteError, RemoteTraceback, Server, SharedMemoryServer):
    _cls.__module__ = __name__
del _cls


#
# Manager state
#


class State:
    __slots__ = ["value"]
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


def _state_error(state, what):
    if state == State.STARTED:
        return ProcessError("Already started %s" % what)
    if state == State.SHUTDOWN:
        return ProcessError("Manager has shut down")
    return ProcessError(f"Unknown state {state!r}")


#
# BaseManager
#


class BaseManager:
    """Base class for managers"""

    _registry = {}
    _Server = Server

    def __init__(
        self,
        address=None,
        authkey=None,
        serializer="pickle",
        ctx=None,
        *,
        shutdown_timeout=1.0,
    ):
        if authkey is None:
            authkey = process.current_process().authkey
        self._address = address
        self._authkey = process.AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = serializer
        self._Listener, self._Client = listener_client[serializer]
        if ctx is None:
            from . import context

            ctx = context._default_context.get_context()
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout

    def get_server(self):
        """Return server object with serve_forever() method and address
        attribute"""
        if self._state.value != State.INITIAL:
            raise _state_error(self._state.value, "server")
        return self._Server(
            self._registry, self._address, self._authkey, self._serializer
        )

    def connect(self):
        """Connect manager object to the server process"""
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            dispatch(conn, None, "dummy")
        finally:
            conn.close()
        self._state.value = State.STARTED

    def start(self, initializer=None, initargs=()):
        """Spawn a server process for this manager object"""
        if self._state.value != State.INITIAL:
            raise _state_error(self._state.value, "server")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        reader, writer = connection.Pipe(duplex=False)
        self._process = self._ctx.Process(
            target=type(self)._run_server,
            args=(
                self._registry,
                self._address,
                self._authkey,
                self._serializer,
                writer,
                initializer,
                initargs,
            ),
        )
        ident = ":".join(str(i) for i in self._process._identity)
        self._process.name = type(self).__name__ + "-" + ident
        try:
            self._process.start()
        finally:
            writer.close()
        try:
            self._address = reader.recv()
        finally:
            reader.close()
        self._state.value = State.STARTED
        self.shutdown = util.Finalize(
            self,
            type(self)._finalize_manager,
            args=(
                self._process,
                self._address,
                self._authkey,
                self._state,
                self._Client,
                self._shutdown_timeout,
            ),
            exitpriority=0,
        )

    @classmethod
    def _run_server(
        cls,
        registry,
        address,
        authkey,
        serializer,
        writer,
        initializer=None,
        initargs=(),
    ):
        """Create a server, report its address and run it"""
        # Ctrl-C in the terminal is for the program, not for its manager
        # (bpo-36368): the manager ends when the program shuts it down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The segments this server creates are unlinked when it ends,
        # however it ends -- not when a fork parent's tracker does.
        from . import shared_memory

        shared_memory._own_tracker()
        if initializer is not None:
            initializer(*initargs)
        server = cls._Server(registry, address, authkey, serializer)
        writer.send(server.address)
        writer.close()
        util.info("manager serving at %r", server.address)
        server.serve_forever()

    def _create(self, typeid, /, *args, **kwds):
        """Create a new shared object; return the token and exposed tuple"""
        assert self._state.value == State.STARTED, "server not yet started"
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            id, exposed = dispatch(
                conn, None, "create", (typeid,) + args, kwds
            )
        finally:
            conn.close()
        return Token(typeid, self._address, id), exposed

    def join(self, timeout=None):
        """Join the manager process (if it has been spawned)"""
        if self._process is not None:
            self._process.join(timeout)
            if not self._process.is_alive():
                self._process = None

    def _debug_info(self):
        """Return some info about the servers shared objects and
        connections"""
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            return dispatch(conn, None, "debug_info")
        finally:
            conn.close()

    def _number_of_objects(self):
        """Return the number of shared objects"""
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            return dispatch(conn, None, "number_of_objects")
        finally:
            conn.close()

    def __enter__(self):
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            if self._state.value == State.INITIAL:
                raise ProcessError("Unable to start server")
            raise _state_error(self._state.value, "server")
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.shutdown()

    @staticmethod
    def _finalize_manager(
        process, address, authkey, state, _Client, shutdown_timeout
    ):
        """Shutdown the manager process; will be registered as a
        finalizer"""
        if process.is_alive():
            util.info("sending shutdown message to manager")
            try:
                conn = _Client(address, authkey=authkey)
                try:
                    dispatch(conn, None, "shutdown")
                finally:
                    conn.close()
            except Exception:  # noqa: BLE001
                pass
            process.join(timeout=shutdown_timeout)
            if process.is_alive():
                util.info("manager still alive")
                if hasattr(process, "terminate"):
                    util.info("trying to `terminate()` manager process")
                    process.terminate()
                    process.join(timeout=shutdown_timeout)
                    if process.is_alive():
                        util.info("manager still alive after terminate")
                        process.kill()
                        process.join()
        state.value = State.SHUTDOWN
        BaseProxy._address_to_local.pop(address, None)

    @property
    def address(self):
        return self._address

    @classmethod
    def register(
        cls,
        typeid,
        callable=None,
        proxytype=None,
        exposed=None,
        method_to_typeid=None,
        create_method=True,
    ):
        """Register a typeid with the manager type"""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(
            proxytype, "_method_to_typeid_", None
        )
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                assert type(key) is str, "%r is not a string" % key
                assert type(value) is str, "%r is not a string" % value
        cls._registry[typeid] = (
            callable,
            exposed,
            method_to_typeid,
            proxytype,
        )
        if create_method:

            def temp(self, /, *args, **kwds):
                util.debug("requesting creation of a shared %r object", typeid)
                token, exp = self._create(typeid, *args, **kwds)
                # The registry of the manager's class, read now: a
                # subclass may serve the type with another proxy type.
                ptype = type(self)._registry[typeid][-1]
                return _proxy_for_reference(
                    ptype, token, self._serializer, self, self._authkey, exp
                )

            temp.__name__ = typeid
            temp.__qualname__ = cls.__qualname__ + "." + typeid
            setattr(cls, typeid, temp)


#
# Proxies
#


class ProcessLocalSet(set):
    """A set emptied in a child after a fork."""

    def __init__(self):
        util.register_after_fork(self, lambda obj: obj.clear())

    def __reduce__(self):
        return type(self), ()


class BaseProxy:
    """A base for proxies of shared objects"""

    # The replica (fastmp._manager_fast) serving this proxy's calls in
    # this process, or None: calls go to the server.
    _r = None
    # Does this proxy type serve calls from a replica when it can?
    _fastmp_replicated = False

    # server address -> (per-thread connections, ids this process holds)
    _address_to_local = {}
    _mutex = util.ForkAwareThreadLock()

    def __init__(
        self,
        token,
        serializer,
        manager=None,
        authkey=None,
        exposed=None,
        incref=True,
        manager_owned=False,
    ):
        with BaseProxy._mutex:
            tls_idset = BaseProxy._address_to_local.get(token.address)
            if tls_idset is None:
                tls_idset = util.ForkAwareLocal(), ProcessLocalSet()
                BaseProxy._address_to_local[token.address] = tls_idset
        # This thread's connection to the server at token.address.
        self._tls = tls_idset[0]
        # The ids of the server's objects this process holds references to.
        self._idset = tls_idset[1]
        self._token = token
        self._id = token.id
        self._manager = manager
        self._serializer = serializer
        self._Client = listener_client[serializer][1]
        # True for a proxy rebuilt inside the server itself (a managed
        # object holding another's proxy).
        self._owned_by_manager = manager_owned
        if authkey is not None:
            self._authkey = process.AuthenticationString(authkey)
        elif self._manager is not None:
            self._authkey = self._manager._authkey
        else:
            self._authkey = process.current_process().authkey
        if incref:
            self._incref()
        util.register_after_fork(self, BaseProxy._after_fork)
        if self._fastmp_replicated:
            self._r = _manager_fast.attach(token)

    def _connect(self):
        util.debug("making connection to manager")
        name = process.current_process().name
        if threading.current_thread().name != "MainThread":
            name += "|" + threading.current_thread().name
        conn = self._Client(self._token.address, authkey=self._authkey)
        try:
            dispatch(conn, None, "accept_connection", (name,))
        except BaseException:
            conn.close()
            raise
        self._tls.connection = conn
        return conn

    # (kwds={}: the stdlib's signature, and no dict made per call)
    def _callmethod(self, methodname, args=(), kwds={}):  # noqa: B006
        """Try to call a method of the referent and return a copy of the
        result"""
        try:
            conn = self._tls.connection
        except AttributeError:
            util.debug(
                "thread %r does not own a connection",
                threading.current_thread().name,
            )
            conn = self._connect()
        conn.send((self._id, methodname, args, kwds))
        kind, result = conn.recv()
        if kind == "#RETURN":
            return result
        if kind == "#PROXY":
            return self._new_proxy(*result)
        raise convert_to_error(kind, result)

    def _new_proxy(self, exposed, token):
        # A method whose result the server keeps (method_to_typeid).
        registry = (self._manager or SyncManager)._registry
        proxytype = registry[token.typeid][-1]
        token.address = self._token.address
        return _proxy_for_reference(
            proxytype,
            token,
            self._serializer,
            self._manager,
            self._authkey,
            exposed,
        )

    def _getvalue(self):
        """Get a copy of the value of the referent"""
        return self._callmethod("#GETVALUE")

    def _incref(self):
        if self._owned_by_manager:
            util.debug("owned_by_manager skipped INCREF of %r", self._token.id)
            return
        conn = self._Client(self._token.address, authkey=self._authkey)
        try:
            dispatch(conn, None, "incref", (self._id,))
        finally:
            conn.close()
        util.debug("INCREF %r", self._token.id)
        self._hold()

    def _hold(self):
        # This proxy holds one of the server's references to its referent:
        # give it back when the proxy goes.
        self._idset.add(self._id)
        state = self._manager and self._manager._state
        self._close = util.Finalize(
            self,
            BaseProxy._decref,
            args=(
                self._token,
                self._authkey,
                state,
                self._tls,
                self._idset,
                self._Client,
            ),
            exitpriority=10,
        )

    @staticmethod
    def _decref(token, authkey, state, tls, idset, _Client):
        idset.discard(token.id)
        if state is None or state.value == State.STARTED:
            # Tell the manager this process no longer holds the referent.
            try:
                util.debug("DECREF %r", token.id)
                conn = _Client(token.address, authkey=authkey)
                try:
                    dispatch(conn, None, "decref", (token.id,))
                finally:
                    conn.close()
            except Exception as e:  # noqa: BLE001
                util.debug("... decref failed %s", e)
        else:
            util.debug("DECREF %r -- manager already shutdown", token.id)
        # The process holds nothing more of this manager's: close this
        # thread's connection.
        if not idset and hasattr(tls, "connection"):
            util.debug(
                "thread %r has no more proxies so closing conn",
                threading.current_thread().name,
            )
            tls.connection.close()
            del tls.connection

    def _after_fork(self):
        self._manager = None
        try:
            self._incref()
        except Exception as e:  # noqa: BLE001
            # The manager may have shut down.
            util.info("incref failed: %s" % e)

    def __reduce__(self):
        # (a replica sends a value holding a proxy through the server)
        _manager_fast.proxies_pickled[0] += 1
        kwds = {}
        if get_spawning_popen() is not None:
            kwds["authkey"] = self._authkey
        if getattr(self, "_isauto", False):
            kwds["exposed"] = self._exposed_
            return (
                RebuildProxy,
                (AutoProxy, self._token, self._serializer, kwds),
            )
        return (
            RebuildProxy,
            (type(self), self._token, self._serializer, kwds),
        )

    def __deepcopy__(self, memo):
        return self._getvalue()

    def __repr__(self):
        return "<%s object, typeid %r at %#x>" % (
            type(self).__name__,
            self._token.typeid,
            id(self),
        )

    def __str__(self):
        """Return representation of the referent (or a fall-back if that
        fails)"""
        try:
            return self._callmethod("__repr__")
        except Exception:  # noqa: BLE001
            return repr(self)[:-1] + "; '__str__()' failed>"


def _proxy_for_reference(
    proxytype, token, serializer, manager, authkey, exposed
):
    """A proxy that takes over the reference the server took for us (in
    create(), or for a '#PROXY' reply).

    The stdlib's client makes the proxy (which increfs on a connection of
    its own) and then decrefs on another: two more connections and
    handshakes per proxy for the same count.  fastmp's proxy types adopt
    the reference instead; another proxy type (a factory function, a
    class from elsewhere) gets the stdlib's sequence."""
    if proxytype is AutoProxy or (
        isinstance(proxytype, type) and issubclass(proxytype, BaseProxy)
    ):
        proxy = proxytype(
            token,
            serializer,
            manager=manager,
            authkey=authkey,
            exposed=exposed,
            incref=False,
        )
        proxy._hold()
        return proxy
    proxy = proxytype(
        token, serializer, manager=manager, authkey=authkey, exposed=exposed
    )
    conn = listener_client[serializer][1](token.address, authkey=authkey)
    try:
        dispatch(conn, None, "decref", (token.id,))
    finally:
        conn.close()
    return proxy


def RebuildProxy(func, token, serializer, kwds):
    """Function used for unpickling proxy objects."""
    server = getattr(process.current_process(), "_manager_server", None)
    if server and server.address == token.address:
        util.debug("Rebuild a proxy owned by manager, token=%r", token)
        kwds["manager_owned"] = True
        if token.id not in server.id_to_local_proxy_obj:
            server.id_to_local_proxy_obj[token.id] = server.id_to_obj[token.id]
    incref = kwds.pop("incref", True) and not getattr(
        process.current_process(), "_inheriting", False
    )
    return func(token, serializer, incref=incref, **kwds)


def _proxy_method(name):
    def method(self, /, *args, **kwds):
        return self._callmethod(name, args, kwds)

    method.__name__ = method.__qualname__ = name
    return method


_proxy_types = {}


def MakeProxyType(name, exposed, _cache=_proxy_types):
    """Return a proxy type whose methods are given by `exposed`"""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    dic = {meth: _proxy_method(meth) for meth in exposed}
    ProxyType = type(name, (BaseProxy,), dic)
    ProxyType._exposed_ = exposed
    _cache[(name, exposed)] = ProxyType
    return ProxyType


# The auto-proxied SyncManager types that a replica may serve (see
# fastmp._manager_fast): their proxy's methods try it first.
_AUTO_REPLICATED = ("Queue", "JoinableQueue")
_replicated_auto_types = {}


def _replicated_auto_type(name, exposed):
    exposed = tuple(exposed)
    try:
        return _replicated_auto_types[(name, exposed)]
    except KeyError:
        pass
    ProxyType = type(name, (BaseProxy,), _replicated(*exposed))
    ProxyType._exposed_ = exposed
    ProxyType._fastmp_replicated = True
    _replicated_auto_types[(name, exposed)] = ProxyType
    return ProxyType


def AutoProxy(
    token,
    serializer,
    manager=None,
    authkey=None,
    exposed=None,
    incref=True,
    manager_owned=False,
):
    """Return an auto-proxy for `token`"""
    _Client = listener_client[serializer][1]
    if exposed is None:
        conn = _Client(token.address, authkey=authkey)
        try:
            exposed = dispatch(conn, None, "get_methods", (token,))
        finally:
            conn.close()
    if authkey is None and manager is not None:
        authkey = manager._authkey
    if authkey is None:
        authkey = process.current_process().authkey
    if token.typeid in _AUTO_REPLICATED:
        ProxyType = _replicated_auto_type(
            "AutoProxy[%s]" % token.typeid, exposed
        )
    else:
        ProxyType = MakeProxyType("AutoProxy[%s]" % token.typeid, exposed)
    proxy = ProxyType(
        token,
        serializer,
        manager=manager,
        authkey=authkey,
        incref=incref,
        manager_owned=manager_owned,
    )
    proxy._isauto = True
    return proxy


#
# Types and callables registered with SyncManager
#


class Namespace:
    def __init__(self, /, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        temp = sorted(
            "%s=%r" % (name, value)
            for name, value in list(self.__dict__.items())
            if not name.startswith("_")
        )
        return "%s(%s)" % (self.__class__.__name__, ", ".join(temp))


class Value:
    def __init__(self, typecode, value, lock=True):
        self._typecode = typecode
        self._value = value

    def get(self):
        return self._value

    def set(self, value):
        self._value = value

    def __repr__(self):
        return "%s(%r, %r)" % (
            type(self).__name__,
            self._typecode,
            self._value,
        )

    value = property(get, set)


def Array(typecode, sequence, lock=True):
    return array.array(typecode, sequence)


def _pool(*args, **kwds):
    # Whatever fastmp.pool's Pool is (imported when first asked for).
    from . import pool

    return pool.Pool(*args, **kwds)


#
# Proxy types used by SyncManager
#


class IteratorProxy(BaseProxy):
    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self):
        return self

    def __next__(self, *args):
        return self._callmethod("__next__", args)

    def send(self, *args):
        return self._callmethod("send", args)

    def throw(self, *args):
        return self._callmethod("throw", args)

    def close(self, *args):
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    _exposed_ = ("acquire", "release")
    _fastmp_replicated = True

    def acquire(self, blocking=True, timeout=None):
        args = (blocking,) if timeout is None else (blocking, timeout)
        r = self._r
        if r is not None:
            return r.acquire(*args)
        return self._callmethod("acquire", args)

    def release(self):
        r = self._r
        if r is not None:
            return r.release()
        return self._callmethod("release")

    def __enter__(self):
        r = self._r
        if r is not None:
            return r.__enter__()
        return self._callmethod("acquire")

    def __exit__(self, exc_type, exc_val, exc_tb):
        r = self._r
        if r is not None:
            return r.__exit__()
        return self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    _exposed_ = ("acquire", "release", "wait", "notify", "notify_all")

    def wait(self, timeout=None):
        r = self._r
        if r is not None:
            return r.wait(timeout)
        return self._callmethod("wait", (timeout,))

    def notify(self, n=1):
        r = self._r
        if r is not None:
            return r.notify(n)
        return self._callmethod("notify", (n,))

    def notify_all(self):
        r = self._r
        if r is not None:
            return r.notify_all()
        return self._callmethod("notify_all")

    def wait_for(self, predicate, timeout=None):
        return synchronize.wait_for(self, predicate, timeout)


class EventProxy(BaseProxy):
    _exposed_ = ("is_set", "set", "clear", "wait")
    _fastmp_replicated = True

    def is_set(self):
        r = self._r
        if r is not None:
            return r.is_set()
        return self._callmethod("is_set")

    def set(self):
        r = self._r
        if r is not None:
            return r.set()
        return self._callmethod("set")

    def clear(self):
        r = self._r
        if r is not None:
            return r.clear()
        return self._callmethod("clear")

    def wait(self, timeout=None):
        r = self._r
        if r is not None:
            return r.wait(timeout)
        return self._callmethod("wait", (timeout,))


class BarrierProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "wait", "abort", "reset")
    # (one without an action; one with goes through the server)
    _fastmp_replicated = True

    def wait(self, timeout=None):
        r = self._r
        if r is not None:
            return r.wait(timeout)
        return self._callmethod("wait", (timeout,))

    def abort(self):
        r = self._r
        if r is not None:
            return r.abort()
        return self._callmethod("abort")

    def reset(self):
        r = self._r
        if r is not None:
            return r.reset()
        return self._callmethod("reset")

    @property
    def parties(self):
        r = self._r
        if r is not None:
            return r.parties
        return self._callmethod("__getattribute__", ("parties",))

    @property
    def n_waiting(self):
        r = self._r
        if r is not None:
            return r.n_waiting
        return self._callmethod("__getattribute__", ("n_waiting",))

    @property
    def broken(self):
        r = self._r
        if r is not None:
            return r.broken
        return self._callmethod("__getattribute__", ("broken",))


class NamespaceProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")
    _fastmp_replicated = True

    def __getattr__(self, key):
        if key[0] == "_":
            return object.__getattribute__(self, key)
        r = object.__getattribute__(self, "_r")
        if r is not None:
            return r.getattr(key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__getattribute__", (key,))

    def __getattribute__(self, key):
        # A public name is the referent's: look it up there first (a
        # miss on the proxy, then __getattr__, costs an exception).
        if key[0] != "_":
            r = object.__getattribute__(self, "_r")
            if r is not None:
                return r.getattr(key)
        return object.__getattribute__(self, key)

    def __setattr__(self, key, value):
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        r = object.__getattribute__(self, "_r")
        if r is not None:
            try:
                return r.setattr(key, value)
            except _manager_fast.ViaServer:
                pass
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__setattr__", (key, value))

    def __delattr__(self, key):
        if key[0] == "_":
            return object.__delattr__(self, key)
        r = object.__getattribute__(self, "_r")
        if r is not None:
            return r.delattr(key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__delattr__", (key,))


class ValueProxy(BaseProxy):
    _exposed_ = ("get", "set")
    _fastmp_replicated = True

    def get(self):
        r = self._r
        if r is None:
            return self._callmethod("get")
        return r.get()

    def set(self, value):
        r = self._r
        if r is not None:
            try:
                return r.set(value)
            except _manager_fast.ViaServer:
                pass
        return self._callmethod("set", (value,))

    value = property(get, set)

    __class_getitem__ = classmethod(types.GenericAlias)


BaseListProxy = MakeProxyType(
    "BaseListProxy",
    (
        "__add__ __contains__ __delitem__ __getitem__ __imul__ __len__ "
        "__mul__ __reversed__ __rmul__ __setitem__ append clear copy count "
        "extend index insert pop remove reverse sort"
    ).split(),
)
BaseListProxy._method_to_typeid_ = {"__reversed__": "Iterator"}


def _inplace(method):
    """An in-place operator of a proxy: the referent's method, then the
    proxy itself (``x += y`` keeps the name bound to the proxy)."""

    def op(self, value):
        self._callmethod(method, (value,))
        return self

    return op


def _replicated(*names):
    """Methods served by the proxy's replica when it has one (see
    fastmp._manager_fast), else by the server."""
    ns = {}
    for name in names:

        def method(self, /, *args, _name=name, **kwds):
            r = self._r
            if r is not None:
                try:
                    return getattr(r, _name)(*args, **kwds)
                except _manager_fast.ViaServer:
                    pass
            return self._callmethod(_name, args, kwds)

        method.__name__ = method.__qualname__ = name
        ns[name] = method
    return ns


def _replicated_inplace(name):
    # x op= y: the replica's (or the server's) method, then the proxy.
    def op(self, value):
        r = self._r
        if r is not None:
            try:
                getattr(r, name)(value)
                return self
            except _manager_fast.ViaServer:
                pass
        self._callmethod("extend" if name == "__iadd__" else name, (value,))
        return self

    op.__name__ = op.__qualname__ = name
    return op


def _replicated_iter(name):
    # A replica iterates over a copy (the server's iterator is a proxy).
    def it(self):
        r = self._r
        if r is not None:
            return getattr(r, name)()
        return self._callmethod(name)

    it.__name__ = it.__qualname__ = name
    return it


class ListProxy(BaseListProxy):
    _fastmp_replicated = True
    locals().update(
        _replicated(
            "__add__",
            "__contains__",
            "__delitem__",
            "__len__",
            "__mul__",
            "__rmul__",
            "__setitem__",
            "clear",
            "copy",
            "count",
            "extend",
            "index",
            "insert",
            "pop",
            "remove",
            "reverse",
            "sort",
        )
    )
    __iadd__ = _replicated_inplace("__iadd__")
    __imul__ = _replicated_inplace("__imul__")
    __reversed__ = _replicated_iter("__reversed__")

    def __getitem__(self, index):
        r = self._r
        if r is None:
            return self._callmethod("__getitem__", (index,))
        return r.__getitem__(index)

    def append(self, item):
        r = self._r
        if r is not None:
            try:
                return r.append(item)
            except _manager_fast.ViaServer:
                pass
        return self._callmethod("append", (item,))

    __class_getitem__ = classmethod(types.GenericAlias)


collections.abc.MutableSequence.register(BaseListProxy)

_BaseDictProxy = MakeProxyType(
    "_BaseDictProxy",
    (
        "__contains__ __delitem__ __getitem__ __ior__ __iter__ __len__ "
        "__or__ __reversed__ __ror__ __setitem__ clear copy fromkeys get "
        "items keys pop popitem setdefault update values"
    ).split(),
)
_BaseDictProxy._method_to_typeid_ = {
    "__iter__": "Iterator",
    "__reversed__": "Iterator",
}


class DictProxy(_BaseDictProxy):
    _fastmp_replicated = True
    locals().update(
        _replicated(
            "__contains__",
            "__delitem__",
            "__len__",
            "__or__",
            "__ror__",
            "clear",
            "copy",
            "fromkeys",
            "items",
            "keys",
            "pop",
            "popitem",
            "setdefault",
            "update",
            "values",
        )
    )
    __ior__ = _replicated_inplace("__ior__")
    __iter__ = _replicated_iter("__iter__")
    __reversed__ = _replicated_iter("__reversed__")

    def __getitem__(self, key):
        r = self._r
        if r is None:
            return self._callmethod("__getitem__", (key,))
        # (SharedDict.__getitem__, inline: the hottest read)
        if r._log.state() != r._state:
            r._fresh()
        return _loads(r._data[key])

    def __setitem__(self, key, value):
        r = self._r
        if r is not None:
            try:
                return r.__setitem__(key, value)
            except _manager_fast.ViaServer:
                pass
        return self._callmethod("__setitem__", (key, value))

    def get(self, *args):
        r = self._r
        if r is None:
            return self._callmethod("get", args)
        return r.get(*args)

    __class_getitem__ = classmethod(types.GenericAlias)


collections.abc.MutableMapping.register(_BaseDictProxy)

_BaseSetProxy = MakeProxyType(
    "_BaseSetProxy",
    (
        "__and__ __contains__ __iand__ __ior__ __isub__ __iter__ __ixor__ "
        "__len__ __or__ __rand__ __ror__ __rsub__ __rxor__ __sub__ __xor__ "
        "__ge__ __gt__ __le__ __lt__ add clear copy difference "
        "difference_update discard intersection intersection_update "
        "isdisjoint issubset issuperset pop remove symmetric_difference "
        "symmetric_difference_update union update"
    ).split(),
)
_BaseSetProxy._method_to_typeid_ = {"__iter__": "Iterator"}


class SetProxy(_BaseSetProxy):
    _fastmp_replicated = True
    locals().update(
        _replicated(
            *(
                "__and__ __contains__ __len__ __or__ __rand__ __ror__ "
                "__rsub__ __rxor__ __sub__ __xor__ __ge__ __gt__ __le__ "
                "__lt__ add clear copy difference difference_update "
                "discard intersection intersection_update isdisjoint "
                "issubset issuperset pop remove symmetric_difference "
                "symmetric_difference_update union update"
            ).split()
        )
    )
    __ior__ = _replicated_inplace("__ior__")
    __iand__ = _replicated_inplace("__iand__")
    __ixor__ = _replicated_inplace("__ixor__")
    __isub__ = _replicated_inplace("__isub__")
    __iter__ = _replicated_iter("__iter__")

    __class_getitem__ = classmethod(types.GenericAlias)


collections.abc.MutableSet.register(_BaseSetProxy)

_BaseArrayProxy = MakeProxyType(
    "_BaseArrayProxy", ("__len__", "__getitem__", "__setitem__")
)


class ArrayProxy(_BaseArrayProxy):
    _fastmp_replicated = True
    locals().update(_replicated("__len__", "__getitem__", "__setitem__"))


BasePoolProxy = MakeProxyType(
    "PoolProxy",
    (
        "apply apply_async close imap imap_unordered join map map_async "
        "starmap starmap_async terminate"
    ).split(),
)
BasePoolProxy._method_to_typeid_ = {
    "apply_async": "AsyncResult",
    "map_async": "AsyncResult",
    "starmap_async": "AsyncResult",
    "imap": "Iterator",
    "imap_unordered": "Iterator",
}


class PoolProxy(BasePoolProxy):
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


#
# SyncManager
#


class SyncManager(BaseManager):
    """Subclass of `BaseManager` which supports a number of shared object
    types.

    The types registered are those intended for the synchronization of
    threads, plus `dict`, `list`, `set` and `Namespace`.

    The `multiprocessing.Manager()` function creates started instances of
    this class.
    """


SyncManager.register("Queue", queue.Queue)
SyncManager.register("JoinableQueue", queue.Queue)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", threading.Lock, AcquirerProxy)
SyncManager.register("RLock", threading.RLock, AcquirerProxy)
SyncManager.register("Semaphore", threading.Semaphore, AcquirerProxy)
SyncManager.register(
    "BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy
)
SyncManager.register("Condition", threading.Condition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", _pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("set", set, SetProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", Array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
# Types of the results of some methods (Pool's, iteration).
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)


#
# SharedMemoryManager
#


class SharedMemoryManager(BaseManager):
    """Like SyncManager but uses SharedMemoryServer instead of Server.

    It provides methods for creating and returning SharedMemory instances
    and for creating a list-like object (ShareableList) backed by shared
    memory, both fastmp's.  It also provides methods that create and
    return Proxy Objects that support synchronization across processes
    (i.e. multi-process-safe locks and semaphores).
    """

    _Server = SharedMemoryServer

    def __init__(self, *args, **kwargs):
        BaseManager.__init__(self, *args, **kwargs)
        util.debug(f"{self.__class__.__name__} created by pid {getpid()}")

    def __del__(self):
        util.debug(f"{self.__class__.__name__}.__del__ by pid {getpid()}")

    def get_server(self):
        "Better than monkeypatching for now; merge into Server ultimately"
        if self._state.value != State.INITIAL:
            if self._state.value == State.STARTED:
                raise ProcessError("Already started SharedMemoryServer")
            if self._state.value == State.SHUTDOWN:
                raise ProcessError("SharedMemoryManager has shut down")
            raise ProcessError(f"Unknown state {self._state.value!r}")
        return self._Server(
            self._registry, self._address, self._authkey, self._serializer
        )

    def SharedMemory(self, size):
        """Returns a new SharedMemory instance with the specified size in
        bytes, to be tracked by the manager."""
        from . import shared_memory

        with self._Client(self._address, authkey=self._authkey) as conn:
            sms = shared_memory.SharedMemory(None, create=True, size=size)
            try:
                dispatch(conn, None, "track_segment", (sms.name,))
            except BaseException:
                sms.unlink()
                raise
        return sms

    def ShareableList(self, sequence):
        """Returns a new ShareableList instance populated with the values
        from the input sequence, to be tracked by the manager."""
        from . import shared_memory

        with self._Client(self._address, authkey=self._authkey) as conn:
            sl = shared_memory.ShareableList(sequence)
            try:
                dispatch(conn, None, "track_segment", (sl.shm.name,))
            except BaseException:
                sl.shm.unlink()
                raise
        return sl
