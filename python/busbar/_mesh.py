"""Mesh from Python: declare a service as a class, provide it, call it.

``@busbar.interface("pkg.Service")`` on an (abstract) class declares a
service; ``@busbar.method`` marks its methods. Declaring registers nothing
with any node: it reads the type hints into a plain schema, which the Rust
core turns into protobuf descriptors (so this package needs no protobuf
library), and refuses at once what protobuf cannot say.

``conn.provide(implementation)`` offers every interface the
implementation's class derives from; ``conn.remote(Interface)`` is a
reference whose methods call through the node. Calls by name
(``conn.call``) see the synthesized messages: the request's fields are the
parameters, the reply's field ``value`` holds the return value.
"""

from __future__ import annotations

import asyncio
import base64
import collections.abc
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import threading
import time
import types
import typing
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import _core
from .errors import BusbarError, FailedPrecondition, InternalError, InvalidArgument

log = logging.getLogger("busbar")

#: The reply message's field that holds the return value.
REPLY_FIELD = "value"

#: Calls a provider runs at once unless ``concurrency=`` says otherwise.
DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 10_000

_SCALARS = {str: "string", int: "int64", float: "double", bool: "bool", bytes: "bytes"}
_SYNC_STREAMS = (collections.abc.Iterator, collections.abc.Iterable, collections.abc.Generator)
_ASYNC_STREAMS = (collections.abc.AsyncIterator, collections.abc.AsyncIterable,
                  collections.abc.AsyncGenerator)
_SUPPORTED = ("use str, int, float, bool, bytes, list[...], dict, Optional[...], "
              "a dataclass or a TypedDict")

# --- declaring ----------------------------------------------------------------


def method(name: Any = None, *, idempotent: bool = False) -> Any:
    """Marks a method of a ``@busbar.interface`` class as one of the
    service's methods, named ``name`` in the service (default: the Python
    name). ``idempotent=True`` marks it ``IDEMPOTENT`` in the descriptor:
    the node may run a call again on another provider when the first one
    is lost before answering. Also usable bare: ``@busbar.method``."""
    if callable(name):
        return method()(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise InvalidArgument(f"bad method name {name!r}: use a non-empty str (an identifier)")
    if not isinstance(idempotent, bool):
        raise InvalidArgument(f"idempotent= is True or False, not {idempotent!r}")

    def mark(function: Any) -> Any:
        if not inspect.isfunction(function):
            raise InvalidArgument(f"@busbar.method marks a plain method (def), not {function!r}")
        function.__busbar_method__ = {  # type: ignore[attr-defined]
            "name": name, "idempotent": idempotent}
        return function

    return mark


def interface(name: str) -> Callable[[type], type]:
    """Declares the decorated class as the service ``name`` (a protobuf full
    name such as ``"mesh.trust.Tokenizer"``; its resource is
    ``/services/<name>``). Its methods marked ``@busbar.method``, and its
    public abstract methods, are the service's methods; their type hints
    say the messages. An unsupported hint raises ``InvalidArgument`` here,
    naming the method, parameter and hint. Nothing is registered: that is
    what ``conn.provide`` does."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"bad interface name {name!r}: use a protobuf full name such as "
                              "'mesh.trust.Tokenizer'")

    def declare(cls: type) -> type:
        if not isinstance(cls, type):
            raise InvalidArgument(f"@busbar.interface({name!r}) decorates a class, not {cls!r}")
        cls.__busbar_interface__ = _declare(name, cls)  # type: ignore[attr-defined]
        return cls

    return declare


class _Message:
    """A dataclass or TypedDict as a message: its fields in order, their shapes."""

    def __init__(self, cls: type, name: str) -> None:
        self.cls = cls
        self.name = name
        self.is_dataclass = dataclasses.is_dataclass(cls)
        self.fields: List[Tuple[str, Any]] = []  # (name, shape), filled after registration
        self.schema: List[Dict[str, Any]] = []

    def make(self, values: Dict[str, Any]) -> Any:
        if not self.is_dataclass:
            return values
        init = {f.name for f in dataclasses.fields(self.cls) if f.init}
        made = self.cls(**{k: v for k, v in values.items() if k in init})
        for key, value in values.items():
            if key not in init:
                object.__setattr__(made, key, value)
        return made


# A shape says how a value crosses between Python and the JSON of its
# protobuf field: ("plain",), ("bytes",), ("list", shape), ("optional",
# shape) or ("message", _Message).
_PLAIN = ("plain",)
_BYTES = ("bytes",)


class _Method:
    """One method of an interface: its names, request fields, return value
    and streaming kinds, and how its values cross."""

    def __init__(self, interface: str, pyname: str, name: str, idempotent: bool,
                 signature: inspect.Signature, params: List[Tuple[str, Any, Dict[str, Any]]],
                 returns: Optional[Tuple[Any, Any]], client_streaming: bool,
                 server_streaming: bool) -> None:
        self.interface = interface
        self.pyname = pyname
        self.name = name
        self.full_name = f"{interface}/{name}"
        self.idempotent = idempotent
        self.signature = signature
        self.params = [(param, shape) for param, shape, _ in params]
        self.param_schemas = [{"name": param, "type": schema} for param, _, schema in params]
        self.returns = returns  # (shape, schema) or None: the reply has no field
        self.client_streaming = client_streaming
        self.server_streaming = server_streaming

    def schema(self) -> Dict[str, Any]:
        return {"name": self.name, "params": self.param_schemas,
                "returns": None if self.returns is None else self.returns[1],
                "idempotent": self.idempotent, "client_streaming": self.client_streaming,
                "server_streaming": self.server_streaming}

    # provider side
    def arguments(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return {param: _from_wire(shape, request.get(param)) for param, shape in self.params}

    def reply(self, value: Any) -> Dict[str, Any]:
        if self.returns is None:
            return {}
        return {REPLY_FIELD: _to_wire(self.returns[0], value)}

    # caller side
    def request(self, args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise InvalidArgument(f"{self.full_name}: {error}") from None
        bound.apply_defaults()
        return {param: _to_wire(shape, bound.arguments[param]) for param, shape in self.params
                if not self.client_streaming}

    def stream_items(self, args: tuple, kwargs: Dict[str, Any]) -> Any:
        """The iterable a client-streaming call sends."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise InvalidArgument(f"{self.full_name}: {error}") from None
        return bound.arguments[self.params[0][0]]

    def stream_message(self, item: Any) -> Dict[str, Any]:
        param, shape = self.params[0]
        return {param: _to_wire(shape, item)}

    def result(self, reply: Dict[str, Any]) -> Any:
        if self.returns is None:
            return None
        return _from_wire(self.returns[0], reply.get(REPLY_FIELD))


class _Interface:
    """What ``@busbar.interface`` found: the service and its descriptors."""

    def __init__(self, name: str, cls: type, methods: List[_Method],
                 messages: Dict[str, _Message]) -> None:
        self.name = name
        self.cls = cls
        self.methods = {m.name: m for m in methods}
        schema = {
            "service": name,
            "methods": [m.schema() for m in methods],
            "messages": [{"name": m.name, "fields": m.schema} for m in messages.values()],
        }
        self.descriptors: bytes = _core.interface_descriptors(schema)
        self.remotes: Dict[bool, type] = {}

    def __repr__(self) -> str:
        return f"<busbar interface {self.name}: {', '.join(sorted(self.methods))}>"


def _declare(service: str, cls: type) -> _Interface:
    found: Dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                if getattr(value.__func__, "__busbar_method__", None) is not None:
                    raise InvalidArgument(f"@busbar.interface({service!r}): {cls.__name__}.{attr} "
                                          "is a static or class method; a service's methods "
                                          "are plain methods")
                continue
            if not inspect.isfunction(value):
                continue
            if (getattr(value, "__busbar_method__", None) is not None
                    or getattr(value, "__isabstractmethod__", False)):
                found[attr] = value
    messages: Dict[str, _Message] = {}
    methods = [_declare_method(service, cls, attr, function, messages)
               for attr, function in found.items()]
    if not methods:
        raise InvalidArgument(f"@busbar.interface({service!r}): {cls.__name__} declares no "
                              "methods; mark them with @busbar.method")
    names: Dict[str, str] = {}
    for m in methods:
        if m.name in names:
            raise InvalidArgument(f"@busbar.interface({service!r}): {cls.__name__}.{names[m.name]} "
                                  f"and {cls.__name__}.{m.pyname} are both named {m.name!r}")
        names[m.name] = m.pyname
    return _Interface(service, cls, methods, messages)


def _refuse(service: str, where: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"@busbar.interface({service!r}): {where}: {why}")


def _declare_method(service: str, cls: type, attr: str, function: Any,
                    messages: Dict[str, _Message]) -> _Method:
    options = getattr(function, "__busbar_method__", None) or {"name": None, "idempotent": False}
    where = f"{cls.__name__}.{attr}"
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:  # a name that does not resolve, a bad string hint
        raise _refuse(service, where, f"its type hints do not resolve ({error}); define the "
                      "types they name at module level, before the interface") from None
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise _refuse(service, where, "a service's method takes self first")
    parameters = parameters[1:]
    params = []
    streamed = []
    for parameter in parameters:
        place = f"{where}, parameter {parameter.name!r}"
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise _refuse(service, place, "*args and **kwargs have no protobuf form; name "
                          "every parameter")
        if parameter.kind == inspect.Parameter.POSITIONAL_ONLY:
            raise _refuse(service, place, "a positional-only parameter cannot be passed by "
                          "name, as calls through the node are")
        if parameter.name not in hints:
            raise _refuse(service, place, f"no type hint; annotate it ({_SUPPORTED})")
        hint = hints[parameter.name]
        item = _stream_item(service, place, hint)
        if item is not None:
            streamed.append(parameter.name)
            hint = item
        shape, schema = _shape(service, place, hint, messages)
        params.append((parameter.name, shape, schema))
    if streamed and len(params) != 1:
        raise _refuse(service, f"{where}, parameter {streamed[0]!r}",
                      "a method that takes a stream of requests takes that stream as its only "
                      "parameter")
    if "return" not in hints:
        raise _refuse(service, where, "no return type hint; annotate it (-> None when it "
                      "returns nothing)")
    returned = hints["return"]
    place = f"{where}, return value"
    item = _stream_item(service, place, returned)
    server_streaming = item is not None
    if server_streaming:
        returned = item
    returns = None
    if returned is not type(None):
        returns = _shape(service, place, returned, messages)
    elif server_streaming:
        raise _refuse(service, place, "a stream of None says nothing; yield values")
    named = options["name"] or attr
    return _Method(service, attr, named, options["idempotent"],
                   signature.replace(parameters=parameters), params, returns,
                   bool(streamed), server_streaming)


def _stream_item(service: str, place: str, hint: Any) -> Any:
    """The item type of an Iterator/AsyncIterator (and kin) hint, else None."""
    origin = typing.get_origin(hint)
    if origin is None and isinstance(hint, type):
        origin = hint  # a bare collections.abc.Iterator
    if origin not in _SYNC_STREAMS and origin not in _ASYNC_STREAMS:
        return None
    args = typing.get_args(hint)
    if not args:
        raise _refuse(service, place, f"{_hint_text(hint)} says no item type; use e.g. "
                      "Iterator[int]")
    return args[0]


def _hint_text(hint: Any) -> str:
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _is_typeddict(hint: Any) -> bool:
    check = getattr(typing, "is_typeddict", None)
    if check is not None and check(hint):
        return True
    return (isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__total__")
            and hasattr(hint, "__annotations__"))


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or (hasattr(types, "UnionType")
                                      and origin is getattr(types, "UnionType"))


def _shape(service: str, place: str, hint: Any,
           messages: Dict[str, _Message]) -> Tuple[Any, Any]:
    """(shape, schema) of a type hint, or InvalidArgument naming the place and the hint."""
    def refuse(why: str) -> InvalidArgument:
        return _refuse(service, place, f"type {_hint_text(hint)}: {why}")

    if isinstance(hint, type) and hint in _SCALARS:
        return (_BYTES if hint is bytes else _PLAIN), _SCALARS[hint]
    origin = typing.get_origin(hint)
    if hint is dict or hint is typing.Dict or origin is dict:
        args = typing.get_args(hint)
        if args and (args[0] is not str or args[1] is not typing.Any):
            raise refuse("a dict crosses as a google.protobuf.Struct (JSON object); declare it "
                         "as dict or Dict[str, Any], or use a dataclass for fixed fields")
        return _PLAIN, "struct"
    if _is_union(origin):
        args = typing.get_args(hint)
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(args) != 2:
            raise refuse("a union of several types has no protobuf form; use Optional[X] or "
                         "one type")
        inner_shape, inner = _shape(service, place, others[0], messages)
        if isinstance(inner, dict) and ("list" in inner or "optional" in inner):
            raise refuse("an optional list has no protobuf form (a repeated field has no "
                         "presence); use the list, empty for none")
        return ("optional", inner_shape), {"optional": inner}
    if origin is list:
        args = typing.get_args(hint)
        if not args:
            raise refuse(f"say what the list holds, e.g. list[int]")
        inner_shape, inner = _shape(service, place, args[0], messages)
        if isinstance(inner, dict) and "list" in inner:
            raise refuse("a list of lists has no protobuf form; wrap the inner list in a "
                         "dataclass")
        if isinstance(inner, dict) and "optional" in inner:
            raise refuse("a list of optional values has no protobuf form (a repeated field "
                         "holds no nulls)")
        return ("list", inner_shape), {"list": inner}
    if hint is list or hint is typing.List:
        raise refuse("say what the list holds, e.g. list[int]")
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or _is_typeddict(hint)):
        message = _declare_message(service, place, hint, messages)
        return ("message", message), {"message": message.name}
    if hint is typing.Any:
        raise refuse(f"Any has no protobuf form; {_SUPPORTED}")
    raise refuse(f"busbar cannot map it to protobuf; {_SUPPORTED}")


def _declare_message(service: str, place: str, cls: type,
                     messages: Dict[str, _Message]) -> _Message:
    name = cls.__name__
    known = messages.get(name)
    if known is not None:
        if known.cls is not cls:
            raise _refuse(service, place, f"two types are named {name} ({known.cls.__module__}."
                          f"{known.cls.__qualname__} and {cls.__module__}.{cls.__qualname__}); "
                          "rename one")
        return known
    message = _Message(cls, name)
    messages[name] = message  # before its fields: a type may hold itself
    try:
        hints = typing.get_type_hints(cls)
    except Exception as error:
        raise _refuse(service, place, f"the type hints of {name} do not resolve ({error})") \
            from None
    names = ([f.name for f in dataclasses.fields(cls)] if message.is_dataclass
             else list(hints))
    for field in names:
        shape, schema = _shape(service, f"{place}, field {name}.{field}", hints[field], messages)
        message.fields.append((field, shape))
        message.schema.append({"name": field, "type": schema})
    return message


# --- values across -----------------------------------------------------------------


def _to_wire(shape: Any, value: Any) -> Any:
    """A Python value as the JSON of its protobuf field."""
    if value is None:
        return None
    kind = shape[0]
    if kind == "plain":
        return value
    if kind == "optional":
        return _to_wire(shape[1], value)
    if kind == "bytes":
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        return value  # the Rust core refuses it, naming the type
    if kind == "list":
        if isinstance(value, (str, bytes, dict)):
            return value
        return [_to_wire(shape[1], item) for item in value]
    message: _Message = shape[1]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        values = {field: getattr(value, field) for field, _ in message.fields}
    elif isinstance(value, dict):
        values = value
    else:
        return value
    shapes = dict(message.fields)
    return {key: _to_wire(shapes[key], item) if key in shapes else item
            for key, item in values.items()}


def _from_wire(shape: Any, value: Any) -> Any:
    """The JSON of a protobuf field as the Python value its hint says."""
    kind = shape[0]
    if value is None:
        return [] if kind == "list" else None
    if kind == "plain":
        return value
    if kind == "optional":
        return _from_wire(shape[1], value)
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "list":
        return [_from_wire(shape[1], item) for item in value]
    message: _Message = shape[1]
    return message.make({field: _from_wire(field_shape, value.get(field))
                         for field, field_shape in message.fields})


# --- the call context ---------------------------------------------------------------


class CallContext:
    """What a handler knows about the call it serves (``busbar.context()``):
    the method ("package.Service/Method"), the caller's identity
    (authenticated by the node), the trace id, the caller's ``x-``
    metadata, and its deadline: ``deadline`` is the absolute time
    (``time.time()`` seconds) and ``time_left()`` the seconds left, both
    None when the caller set none; ``cancelled()`` tells whether the call
    was cancelled meanwhile."""

    __slots__ = ("method", "caller", "trace_id", "metadata", "deadline", "_until", "_call")

    def __init__(self, method: str, caller: str, trace_id: str, metadata: Dict[str, str],
                 time_left: Optional[float], call: Any = None) -> None:
        self._call = call
        self.method = method
        self.caller = caller
        self.trace_id = trace_id
        self.metadata = metadata
        if time_left is None:
            self.deadline: Optional[float] = None
            self._until: Optional[float] = None
        else:
            self.deadline = time.time() + time_left
            self._until = time.monotonic() + time_left

    def time_left(self) -> Optional[float]:
        """Seconds until the caller's deadline (0 once passed), or None."""
        if self._until is None:
            return None
        return max(0.0, self._until - time.monotonic())

    def cancelled(self) -> bool:
        """Whether the caller cancelled the call, its deadline passed or the
        provider is closing. An ``async def`` handler is cancelled at its
        next await; a plain handler runs on its thread until it returns, so
        a long one checks this to stop early (what it answers then is
        dropped)."""
        return self._call is not None and bool(self._call.cancelled)

    def __repr__(self) -> str:
        left = self.time_left()
        deadline = "none" if left is None else f"{left:.3f}s left"
        return (f"<busbar.CallContext {self.method} caller={self.caller!r} "
                f"trace_id={self.trace_id!r} deadline={deadline}>")


_CONTEXT: "contextvars.ContextVar[Optional[CallContext]]" = contextvars.ContextVar(
    "busbar_call_context", default=None)


def context() -> CallContext:
    """The context of the mesh call this handler serves (in its thread or
    task). Raises ``FailedPrecondition`` outside a handler."""
    current = _CONTEXT.get()
    if current is None:
        raise FailedPrecondition("busbar.context() is for mesh handlers: call it while a "
                                 "provided method runs (in its thread or task)")
    return current


def _context_of(call: Any) -> CallContext:
    given = call.context()
    return CallContext(given["method"], given["caller"], given["trace_id"],
                       dict(given["metadata"]), given["time_left"], call)


# --- providing ------------------------------------------------------------------------


class _Handler:
    """An implementation's method serving one method of an interface."""

    def __init__(self, method: _Method, function: Any, where: str) -> None:
        self.method = method
        self.function = function
        self.where = where
        self.is_async = (inspect.iscoroutinefunction(function)
                         or inspect.isasyncgenfunction(function))


class _Offer:
    def __init__(self, services: List[str], descriptors: bytes,
                 handlers: Dict[str, _Handler]) -> None:
        self.services = services
        self.descriptors = descriptors
        self.handlers = handlers


def offer(implementation: Any, asyncio_face: bool) -> _Offer:
    """The services ``implementation`` provides, checked against its
    interfaces; InvalidArgument for what cannot serve."""
    if isinstance(implementation, type):
        raise InvalidArgument(f"provide an instance, e.g. {implementation.__name__}(), "
                              "not the class")
    interfaces: List[_Interface] = []
    for klass in type(implementation).__mro__:
        declared = vars(klass).get("__busbar_interface__")
        if isinstance(declared, _Interface) and declared not in interfaces:
            interfaces.append(declared)
    kind = type(implementation).__name__
    if not interfaces:
        raise InvalidArgument(f"{kind} implements no @busbar.interface: make it a subclass "
                              "of one")
    handlers: Dict[str, _Handler] = {}
    for declared in interfaces:
        for m in declared.methods.values():
            function = getattr(implementation, m.pyname, None)
            where = f"{kind}.{m.pyname}"
            if function is None or getattr(function, "__isabstractmethod__", False):
                raise InvalidArgument(f"{where} is not implemented ({declared.name}/{m.name})")
            if not callable(function):
                raise InvalidArgument(f"{where} is not a method")
            handler = _Handler(m, function, where)
            if handler.is_async and not asyncio_face:
                raise InvalidArgument(f"{where} is async def: provide it with "
                                      "busbar.aio.Connection (async handlers run on its event "
                                      "loop), or make it a plain def")
            generator = (inspect.isgeneratorfunction(function)
                         or inspect.isasyncgenfunction(function))
            if generator and not m.server_streaming:
                raise InvalidArgument(f"{where} is a generator, but {declared.name}/{m.name} "
                                      "answers one value; return it instead")
            handlers[m.full_name] = handler
    return _Offer([i.name for i in interfaces], b"".join(i.descriptors for i in interfaces),
                  handlers)


def check_concurrency(concurrency: Optional[int]) -> int:
    if concurrency is None:
        return DEFAULT_CONCURRENCY
    if (not isinstance(concurrency, int) or isinstance(concurrency, bool)
            or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise InvalidArgument(f"bad concurrency {concurrency!r}: use a whole number from 1 to "
                              f"{MAX_CONCURRENCY}")
    return concurrency


def _failure(handler: _Handler, error: BaseException) -> Tuple[str, str]:
    """What a caller gets for an exception: a BusbarError keeps its code and
    message; anything else is INTERNAL with its type and message (the
    traceback is logged here, never sent)."""
    if isinstance(error, BusbarError):
        return error.code, error.message
    log.error("busbar provider: %s raised", handler.where, exc_info=error)
    return "INTERNAL", f"{type(error).__name__}: {error}"


def _requests(handler: _Handler, call: Any) -> Iterator[Any]:
    """A client-streaming handler's items (blocking)."""
    name, shape = handler.method.params[0]
    while True:
        request = call.next(False)
        if request is None:
            return
        yield _from_wire(shape, request.get(name))


async def _requests_async(handler: _Handler, call: Any) -> Any:
    name, shape = handler.method.params[0]
    while True:
        request = await call.next(True)
        if request is None:
            return
        yield _from_wire(shape, request.get(name))


def _answer(handler: _Handler, call: Any, value: Any, asyncio_face: bool) -> Any:
    """Sends one answer. What its declared type cannot hold is the
    provider's mistake, so it reaches the caller as INTERNAL, not as the
    INVALID_ARGUMENT a caller's bad request is."""
    try:
        return call.send(handler.method.reply(value), asyncio_face)
    except InvalidArgument as error:
        raise InternalError(f"{handler.where} answered what {handler.method.full_name} "
                            f"cannot carry: {error.message}") from None


def _serve(handler: _Handler, call: Any) -> None:
    """Runs a plain handler for one call, on a worker thread, and ends the call."""
    token = _CONTEXT.set(_context_of(call))
    try:
        m = handler.method
        try:
            if m.client_streaming:
                kwargs = {m.params[0][0]: _requests(handler, call)}
            else:
                kwargs = m.arguments(call.next(False) or {})
        except BusbarError as error:
            call.finish(error.code, error.message)
            return
        try:
            result = handler.function(**kwargs)
            if m.server_streaming:
                for item in result:
                    _answer(handler, call, item, False)
            else:
                _answer(handler, call, result, False)
        except Exception as error:
            call.finish(*_failure(handler, error))
            return
        call.finish()
    except BaseException as error:
        call.finish("INTERNAL", f"the handler stopped: {type(error).__name__}")
        raise
    finally:
        _CONTEXT.reset(token)


async def _serve_async(handler: _Handler, call: Any) -> None:
    """Runs an async handler for one call, in a task of its own, and ends the call."""
    _CONTEXT.set(_context_of(call))  # this task's own copy of the context
    m = handler.method
    try:
        try:
            if m.client_streaming:
                kwargs = {m.params[0][0]: _requests_async(handler, call)}
            else:
                kwargs = m.arguments(await call.next(True) or {})
        except BusbarError as error:
            call.finish(error.code, error.message)
            return
        try:
            result = handler.function(**kwargs)
            if inspect.isawaitable(result):
                result = await result
            if not m.server_streaming:
                await _answer(handler, call, result, True)
            elif hasattr(result, "__aiter__"):
                async for item in result:
                    await _answer(handler, call, item, True)
            else:
                for item in result:
                    await _answer(handler, call, item, True)
        except Exception as error:
            call.finish(*_failure(handler, error))
            return
        call.finish()
    except asyncio.CancelledError:
        call.finish("CANCELLED", "the handler was cancelled")
        raise
    except BaseException as error:
        call.finish("INTERNAL", f"the handler stopped: {type(error).__name__}")
        raise


class _ProviderBase:
    """A running provider: the services it offers and its id on the node."""

    def __init__(self, core: Any, offered: _Offer, concurrency: int) -> None:
        self._core = core
        self._handlers = offered.handlers
        self.services: List[str] = list(offered.services)
        self.concurrency = concurrency
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    @property
    def id(self) -> str:
        """The provider's id on the node (see ``conn.services()``)."""
        return self._core.id

    @property
    def paths(self) -> List[str]:
        """The service resources: ``/services/<name>``."""
        return self._core.paths

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return self._core.in_flight

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<busbar.Provider {self.id} {', '.join(self.services)}{state}>"

    def _handler(self, call: Any) -> Optional[_Handler]:
        """The handler of ``call``'s method, or None once the call is
        refused (UNIMPLEMENTED) for want of one."""
        handler = self._handlers.get(call.method)
        if handler is None:
            call.finish("UNIMPLEMENTED", f"this provider does not implement {call.method}")
        return handler

    def _workers(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread pool plain handlers run on: at most ``concurrency``
        threads, made as calls need them."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="busbar-provider")
        return self._executor


class Provider(_ProviderBase):
    """A running provider of a blocking connection: calls are taken by a
    thread of its own and run on a pool of at most ``concurrency`` threads.
    ``close()`` drains it; it is a context manager too."""

    def __init__(self, core: Any, offered: _Offer, concurrency: int) -> None:
        super().__init__(core, offered, concurrency)
        self._taker = threading.Thread(target=self._take, name=f"busbar-provider {self.id}",
                                       daemon=True)
        self._taker.start()

    def _take(self) -> None:
        workers = self._workers()
        while True:
            call = self._core.next_call(False)
            if call is None:
                return
            handler = self._handler(call)
            if handler is None:
                continue
            try:
                workers.submit(_serve, handler, call)
            except RuntimeError:  # the pool was shut down: the provider is closing
                call.finish("UNAVAILABLE", "this provider is closing")

    def close(self, *, grace: float = 5.0) -> None:
        """Drains: the node sends no new calls here, calls in flight finish
        for up to ``grace`` seconds, then the provider ends."""
        self._core.close(grace)
        self._taker.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncProvider(_ProviderBase):
    """A running provider of an asyncio connection: ``async def`` handlers
    run as tasks on the connection's event loop, plain ones on a pool of at
    most ``concurrency`` threads. ``await close()`` drains it; it is an
    async context manager too."""

    def __init__(self, core: Any, offered: _Offer, concurrency: int) -> None:
        super().__init__(core, offered, concurrency)
        self._loop = asyncio.get_running_loop()
        self._tasks: set = set()
        self._taker = self._loop.create_task(self._take())

    async def _take(self) -> None:
        while True:
            call = await self._core.next_call(True)
            if call is None:
                return
            handler = self._handler(call)
            if handler is None:
                continue
            task = self._loop.create_task(self._run(handler, call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: _Handler, call: Any) -> None:
        if handler.is_async:
            work: Any = asyncio.ensure_future(_serve_async(handler, call))
        else:
            work = self._loop.run_in_executor(self._workers(), _serve, handler, call)
        ended = asyncio.ensure_future(_awaited(call.ended(True)))
        await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
        if ended.done() and ended.result() and not work.done():
            work.cancel()  # the caller is gone: an async handler stops at its next await
        if not ended.done():
            ended.cancel()

    async def close(self, *, grace: float = 5.0) -> None:
        """Drains (see ``busbar.Provider.close``)."""
        await self._core.close(grace)
        try:
            await asyncio.wait_for(asyncio.shield(self._taker), 5)
        except asyncio.TimeoutError:
            self._taker.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> "AsyncProvider":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


# --- calling -----------------------------------------------------------------------------


def remote(connection: Any, interface_class: Any, timeout: Optional[float],
           asyncio_face: bool, trace_id: Optional[str] = None,
           metadata: Optional[Dict[str, str]] = None) -> Any:
    """A reference to ``interface_class`` whose methods call through the node."""
    declared = (vars(interface_class).get("__busbar_interface__")
                if isinstance(interface_class, type) else None)
    if not isinstance(declared, _Interface):
        raise InvalidArgument(f"{interface_class!r} is not a @busbar.interface class: pass the "
                              "interface itself, e.g. conn.remote(Tokenizer)")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InvalidArgument(f"bad timeout {timeout!r}: use a positive number of seconds")
    made = declared.remotes.get(asyncio_face)
    if made is None:
        build = _async_caller if asyncio_face else _caller
        namespace = {m.pyname: build(m) for m in declared.methods.values()}
        namespace["__repr__"] = lambda self: (f"<busbar remote {declared.name} via "
                                              f"{self._busbar_connection!r}>")
        made = type(f"Remote{interface_class.__name__}", (interface_class,), namespace)
        made.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
        declared.remotes[asyncio_face] = made
    reference: Any = object.__new__(made)
    reference._busbar_connection = connection
    # What every call of the reference sends with it.
    reference._busbar_call = {"timeout": timeout, "trace_id": trace_id, "metadata": metadata}
    return reference


def _caller(m: _Method) -> Callable[..., Any]:
    if m.client_streaming:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            items = m.stream_items(args, kwargs)
            stream = self._busbar_connection.stream(m.full_name, None,
                                                    **self._busbar_call)
            if m.server_streaming:
                threading.Thread(target=_send_all, args=(m, stream, items),
                                 name=f"busbar-send {m.full_name}", daemon=True).start()
                return _results(m, stream)
            _send_all(m, stream, items)
            replies = list(stream)
            return m.result(replies[0] if replies else {})
    elif m.server_streaming:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            request = m.request(args, kwargs)
            stream = self._busbar_connection.stream(m.full_name, request,
                                                    **self._busbar_call)
            return _results(m, stream)
    else:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            request = m.request(args, kwargs)
            reply = self._busbar_connection.call(m.full_name, request,
                                                 **self._busbar_call)
            return m.result(reply)
    call.__name__ = m.pyname
    call.__doc__ = f"Calls {m.full_name} through the node."
    return call


@contextlib.contextmanager
def _sending(stream: Any) -> Iterator[None]:
    """Ends the request side of ``stream`` however sending its items stops;
    a failure other than the call's own cancels the call."""
    try:
        yield
    except BusbarError:
        pass  # the call ended; reading it says why
    except BaseException:
        stream.cancel()
        raise
    finally:
        stream.end()


def _send_all(m: _Method, stream: Any, items: Any) -> None:
    with _sending(stream):
        for item in items:
            stream.send(m.stream_message(item))


def _results(m: _Method, stream: Any) -> Iterator[Any]:
    try:
        for reply in stream:
            yield m.result(reply)
    finally:
        stream.cancel()  # a reader that stops early ends the call


def _async_caller(m: _Method) -> Callable[..., Any]:
    if m.server_streaming:
        async def responses(self: Any, *args: Any, **kwargs: Any) -> Any:
            connection = self._busbar_connection
            if m.client_streaming:
                items = m.stream_items(args, kwargs)
                stream = await connection.stream(m.full_name, None, **self._busbar_call)
                sender = asyncio.ensure_future(_send_all_async(m, stream, items))
            else:
                request = m.request(args, kwargs)
                stream = await connection.stream(m.full_name, request,
                                                 **self._busbar_call)
                sender = None
            try:
                async for reply in stream:
                    yield m.result(reply)
            finally:
                stream.cancel()
                if sender is not None and not sender.done():
                    sender.cancel()

        responses.__name__ = m.pyname
        responses.__doc__ = f"Calls {m.full_name} through the node: an async iterator."
        return responses

    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        connection = self._busbar_connection
        if m.client_streaming:
            items = m.stream_items(args, kwargs)
            stream = await connection.stream(m.full_name, None, **self._busbar_call)
            await _send_all_async(m, stream, items)
            replies = [reply async for reply in stream]
            return m.result(replies[0] if replies else {})
        request = m.request(args, kwargs)
        return m.result(await connection.call(m.full_name, request,
                                              **self._busbar_call))

    call.__name__ = m.pyname
    call.__doc__ = f"Calls {m.full_name} through the node (awaitable)."
    return call


async def _send_all_async(m: _Method, stream: Any, items: Any) -> None:
    with _sending(stream):
        if hasattr(items, "__aiter__"):
            async for item in items:
                await stream.send(m.stream_message(item))
        else:
            for item in items:
                await stream.send(m.stream_message(item))
