"""The layout's rules, read from the source with ``ast`` (nothing is imported).

- ``scheduler/aws`` and ``scheduler/local`` (the two runtimes) never import each other;
- the core never imports either runtime;
- every package names its public API in ``__all__``, and only names its ``__init__`` has.

That ``state_machines`` imports no AWS library and no ``scheduler`` is proven in
``tests/unit/state_machines/test_state_machine.py`` for the static imports of its top-level
modules; this file covers what that test cannot see (modules in subfolders, ``importlib`` /
``__import__`` calls).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = ROOT / "scheduler"
STATE_MACHINES = ROOT / "state_machines"

AWS = "scheduler.aws"
LOCAL = "scheduler.local"

CORE = [
    *(SCHEDULER / name for name in ("github", "db", "stream", "runs", "api")),
    *(SCHEDULER / name for name in ("settings.py", "config.py", "errors.py", "wiring.py")),
    SCHEDULER / "repo_name.py",
    STATE_MACHINES,
]


def sources(*places: Path) -> Iterator[Path]:
    for place in places:
        if place.is_file():
            yield place
        else:
            yield from sorted(p for p in place.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def package_of(path: Path) -> str:
    """The dotted package a module's relative imports start from."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1])


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``path`` may import, with its line."""
    return modules_in(path.read_text(), package_of(path), str(path))


def modules_in(text: str, package: str, filename: str = "<source>") -> Iterator[tuple[int, str]]:
    """Every module a source may import, with its line, anywhere in it (functions too).

    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule), relative imports
    are made absolute against ``package``, and ``importlib.import_module("x")`` /
    ``__import__("x")`` yield ``x``.
    """
    for node in ast.walk(ast.parse(text, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and (module := dynamically_imported(node)):
            yield node.lineno, module


def dynamically_imported(node: ast.Call) -> str | None:
    """``x`` for ``importlib.import_module("x")`` or ``__import__("x")``, else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0] if node.args else None
    if (
        name in {"import_module", "__import__"}
        and isinstance(first, ast.Constant)
        and isinstance(first.value, str)
    ):
        return first.value
    return None


def dynamic_imports(path: Path) -> Iterator[tuple[int, str]]:
    """Only the ``importlib.import_module`` / ``__import__`` calls of ``path``, with their line."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and (module := dynamically_imported(node)):
            yield node.lineno, module


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def violations(
    places: list[Path],
    forbidden: tuple[str, ...],
    reach: Callable[[Path], Iterator[tuple[int, str]]] = imported_modules,
) -> list[str]:
    """One line per offending import statement: file, line, the statement, what it reaches."""
    found: list[str] = []
    for path in sources(*places):
        lines = path.read_text().splitlines()
        reached: dict[int, set[str]] = {}
        for line, module in reach(path):
            if any(is_within(module, package) for package in forbidden):
                reached.setdefault(line, set()).add(module)
        for line, modules in sorted(reached.items()):
            statement = lines[line - 1].strip()
            found.append(f"{relative(path)}:{line}: {statement!r} reaches {max(modules, key=len)}")
    return found


@pytest.mark.parametrize(
    ("runtime", "other"), [("aws", LOCAL), ("local", AWS)], ids=["aws-not-local", "local-not-aws"]
)
def test_the_runtimes_never_import_each_other(runtime: str, other: str) -> None:
    bad = violations([SCHEDULER / runtime], (other,))
    assert not bad, "\n".join(bad)


def test_the_core_imports_neither_runtime() -> None:
    missing = [relative(place) for place in CORE if not place.exists()]
    assert not missing, f"core paths not found (update CORE): {missing}"
    bad = violations(CORE, (AWS, LOCAL))
    assert not bad, "\n".join(bad)


PURE_FORBIDDEN = ("boto3", "botocore", "pynamodb", "aws_xray_sdk", "scheduler")


def test_state_machines_is_pure_where_its_own_test_does_not_look() -> None:
    """test_state_machine.py reads the import statements of ``state_machines/*.py``; this adds
    the modules in subfolders (all their imports) and dynamic imports anywhere."""
    top_level = sorted(STATE_MACHINES.glob("*.py"))
    subfolders = sorted(
        place
        for place in STATE_MACHINES.iterdir()
        if place.is_dir() and place.name != "__pycache__"
    )
    bad = violations(subfolders, PURE_FORBIDDEN) + violations(
        top_level, PURE_FORBIDDEN, reach=dynamic_imports
    )
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_form_of_import() -> None:
    """The rules above are only as good as modules_in; pin the forms it must catch."""
    text = "\n".join(
        [
            "import scheduler.local.stack",
            "from scheduler import local",
            "from scheduler.local import logs",
            "from ..local.stack import serve",
            "from .. import local as runtime",
            "from . import codebuild",
            "def later():",
            "    from scheduler.local.http_server import HttpServer",
            "    importlib.import_module('scheduler.local.executor')",
            "import scheduler.localish",
            "runtime = __import__('scheduler.local')",
        ]
    )
    caught = {line for line, name in modules_in(text, "scheduler.aws") if is_within(name, LOCAL)}
    assert caught == {1, 2, 3, 4, 5, 8, 9, 11}
    assert package_of(SCHEDULER / "aws" / "handlers.py") == "scheduler.aws"
    assert package_of(SCHEDULER / "aws" / "__init__.py") == "scheduler.aws"


# -- packages and their public API --------------------------------------------------------------


def packages() -> list[Path]:
    """Every directory of ``scheduler`` and ``state_machines`` that holds Python source."""
    found = set()
    for top in (SCHEDULER, STATE_MACHINES):
        for source in sources(top):
            found.add(source.parent)
    return sorted(found)


def assigned(target: ast.expr) -> Iterator[str]:
    """The names an assignment target binds (``a``, ``a, *b``, ``[a, b]``)."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from assigned(element)
    elif isinstance(target, ast.Starred):
        yield from assigned(target.value)


def bound_by(node: ast.stmt) -> Iterator[str]:
    """The names one statement binds by itself (not in the blocks it holds)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name
    elif isinstance(node, ast.Import):
        yield from ((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        yield from (a.asname or a.name for a in node.names if a.name != "*")
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            yield from assigned(target)
    elif isinstance(node, ast.For | ast.AsyncFor) or (
        # ``x: int`` alone binds nothing
        isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None
    ):
        yield from assigned(node.target)
    elif isinstance(node, ast.With | ast.AsyncWith):
        for item in node.items:
            if item.optional_vars is not None:
                yield from assigned(item.optional_vars)


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level, also inside compound statements there
    (``if`` / ``try`` / ``with`` / ``for`` / ``while`` / ``match``), not inside functions."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            names.update(bound_by(node))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue  # what is bound inside belongs to the function or class
            for block in ("body", "orelse", "finalbody"):
                visit(getattr(node, block, []))
            for nested in (*getattr(node, "handlers", []), *getattr(node, "cases", [])):
                visit(nested.body)

    visit(tree.body)
    return names


def declared_all(tree: ast.Module) -> list[str] | None:
    """The literal ``__all__`` of a module, or None when it has none."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value: ast.expr | None = node.value
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "__all__"
        ):
            value = node.value
        else:
            continue
        assert value is not None, "__all__ is annotated but never given a value"
        names = ast.literal_eval(value)
        assert isinstance(names, list | tuple), "__all__ must be a literal list of names"
        return [str(name) for name in names]
    return None


@pytest.mark.parametrize("package", packages(), ids=lambda p: relative(p) or ".")
def test_every_package_names_its_public_api(package: Path) -> None:
    init = package / "__init__.py"
    assert init.is_file(), f"{relative(package)}/ has Python files but no __init__.py"
    tree = ast.parse(init.read_text(), filename=str(init))
    public = declared_all(tree)
    assert public is not None, f"{relative(init)} does not define __all__"
    assert len(public) == len(set(public)), f"{relative(init)}: __all__ repeats a name"
    unbound = sorted(set(public) - bound_names(tree))
    assert not unbound, (
        f"{relative(init)}: __all__ names what it neither defines nor imports: {unbound}"
    )


def test_the_binder_sees_names_bound_in_compound_statements() -> None:
    text = "\n".join(
        [
            "import a.b",
            "from c import d as e",
            "f, *g = 1, 2",
            "h: int = 1",
            "i: int",
            "try:",
            "    from j import k",
            "except ImportError:",
            "    k = None",
            "if True:",
            "    class L: pass",
            "else:",
            "    def m(): n = 1",
            "with open('x') as o: pass",
            "for p in []: q = p",
            "match 1:",
            "    case _: r = 1",
        ]
    )
    assert bound_names(ast.parse(text)) == {
        "a",
        "e",
        "f",
        "g",
        "h",
        "k",
        "L",
        "m",
        "o",
        "p",
        "q",
        "r",
    }
