"""The package's .pyi stubs describe every public name of what was built,
and the asyncio face's stub (aio.pyi) says what the blocking face's
(__init__.pyi) says, awaited."""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "python" / "busbar"

# Blocking-face methods and the asyncio face's counterparts.
ASYNC_NAMES = {"__enter__": "__aenter__", "__exit__": "__aexit__",
               "__iter__": "__aiter__", "__next__": "__anext__"}

# Parameters the asyncio face takes more widely, and why.
WIDER_IN_ASYNCIO = {
    ("Wire", "publish", "chunks"): "an asyncio publish also takes an async iterable",
}

# Methods whose asyncio counterpart answers at once with something else
# than the blocking one's answer, awaited, and why.
NOT_AWAITED_IN_ASYNCIO = {
    ("Connection", "remote"): "the reference is made at once, and only its methods are "
                              "awaited, which no type can say of an interface class",
}


def test_stubs_match_the_package(tmp_path):
    config = tmp_path / "mypy.ini"
    # pyarrow ships no type information; the stubs only name its Table.
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "busbar", "--mypy-config-file", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _text(node: Optional[ast.AST]) -> Optional[str]:
    return None if node is None else ast.unparse(node)


def _members(stub: str) -> Dict[str, Dict[str, list]]:
    """The classes a stub defines: for each, its methods (name: every
    definition, several for overloads) and its annotated attributes."""
    tree = ast.parse((PACKAGE / stub).read_text())
    classes: Dict[str, Dict[str, list]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members: Dict[str, list] = {}
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.setdefault(item.name, []).append(item)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.setdefault(item.target.id, []).append(item)
            classes[node.name] = members
    return classes


def _parameters(function) -> List[Tuple[str, str, Optional[str], Optional[str]]]:
    """(kind, name, annotation, default) of each parameter."""
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out = [("positional-only" if i < len(args.posonlyargs) else "positional", arg.arg,
            _text(arg.annotation), _text(default))
           for i, (arg, default) in enumerate(zip(positional, defaults))]
    if args.vararg:
        out.append(("*", args.vararg.arg, _text(args.vararg.annotation), None))
    out += [("keyword-only", arg.arg, _text(arg.annotation), _text(default))
            for arg, default in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append(("**", args.kwarg.arg, _text(args.kwarg.annotation), None))
    return out


def _awaited(blocking, asyncio) -> bool:
    """Whether the asyncio definition answers what the blocking one does:
    the same, awaited (``async def``, ``Awaitable[...]``, an ``Opening[...]``),
    or as an async iterator. A method without ``timeout=`` never waits for
    the node (``conn.sql(db)``, ``call.cancel()``) and may answer the same
    value at once."""
    want, got = _text(blocking.returns), _text(asyncio.returns)
    if isinstance(asyncio, ast.AsyncFunctionDef):
        return got == want
    if blocking.name == "__iter__":
        return got == f"Async{want}"
    waits = any(name == "timeout" for _, name, _, _ in _parameters(blocking))
    return got in (f"Awaitable[{want}]", f"Opening[{want}]") or (got == want and not waits)


def _differences(class_name: str, blocking: Dict[str, list],
                 asyncio: Dict[str, list]) -> List[str]:
    found = []
    renamed = {ASYNC_NAMES.get(name, name): name for name in blocking}
    for name in sorted(set(renamed) ^ set(asyncio)):
        face = "aio.pyi" if name in asyncio else "__init__.pyi"
        found.append(f"{class_name}.{renamed.get(name, name)}: only in {face}")
    for async_name in sorted(set(renamed) & set(asyncio)):
        name = renamed[async_name]
        ours, theirs = blocking[name], asyncio[async_name]
        where = f"{class_name}.{name}"
        if len(ours) != len(theirs):
            found.append(f"{where}: {len(ours)} definitions (overloads) in __init__.pyi, "
                         f"{len(theirs)} in aio.pyi")
            continue
        for one, other in zip(ours, theirs):
            if isinstance(one, ast.AnnAssign) or isinstance(other, ast.AnnAssign):
                if _text(one) != _text(other):
                    found.append(f"{where}: {_text(one)!r} in __init__.pyi, "
                                 f"{_text(other)!r} in aio.pyi")
                continue
            decorators = [_text(d) for d in one.decorator_list]
            if decorators != [_text(d) for d in other.decorator_list]:
                found.append(f"{where}: decorated differently")
            params, async_params = _parameters(one), _parameters(other)
            if len(params) != len(async_params):
                found.append(f"{where}: parameters {params} in __init__.pyi, "
                             f"{async_params} in aio.pyi")
                continue
            for param, async_param in zip(params, async_params):
                wider = (class_name, name, param[1]) in WIDER_IN_ASYNCIO
                if param[:2] + param[3:] != async_param[:2] + async_param[3:] or (
                        param[2] != async_param[2] and not wider):
                    found.append(f"{where}: parameter {param} in __init__.pyi, "
                                 f"{async_param} in aio.pyi")
            if not _awaited(one, other) and (class_name, name) not in NOT_AWAITED_IN_ASYNCIO:
                found.append(f"{where}: returns {_text(one.returns)} in __init__.pyi but "
                             f"{_text(other.returns)} in aio.pyi (not that, awaited)")
    return found


def test_aio_stub_says_what_the_blocking_stub_says_awaited():
    """Every class with both faces has the same methods with the same
    parameters in aio.pyi as in __init__.pyi, each returning the same,
    awaited (or async-iterated); and no method more."""
    blocking, asyncio = _members("__init__.pyi"), _members("aio.pyi")
    both = sorted(set(blocking) & set(asyncio))
    assert {"Connection", "Call", "Subscription", "Wire", "Database", "TimeSeries",
            "Session"} <= set(both)
    found = [difference for name in both
             for difference in _differences(name, blocking[name], asyncio[name])]
    assert found == [], "\n".join(found)


def test_the_stub_check_finds_a_difference():
    """The comparison above fails for a method aio.pyi lacks, a parameter it
    names differently, a return of another type and a call that is not
    awaited."""
    blocking = ast.parse(
        "class C:\n"
        "    def a(self, x: int, *, timeout: float = ...) -> str: ...\n"
        "    def b(self) -> int: ...\n"
        "    def c(self) -> int: ...\n"
        "    def d(self, *, timeout: float = ...) -> int: ...\n"
        "    def e(self) -> int: ...\n").body[0]
    asyncio = ast.parse(
        "class C:\n"
        "    def a(self, y: int, *, timeout: float = ...) -> Awaitable[str]: ...\n"
        "    def c(self) -> Awaitable[str]: ...\n"
        "    def d(self, *, timeout: float = ...) -> int: ...\n"
        "    def e(self) -> int: ...\n").body[0]

    def members(cls: ast.ClassDef) -> Dict[str, list]:
        return {item.name: [item] for item in cls.body}

    found = _differences("C", members(blocking), members(asyncio))
    assert [f.split(":")[0] for f in found] == ["C.b", "C.a", "C.c", "C.d"], found
