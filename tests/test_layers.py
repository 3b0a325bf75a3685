"""The package's floors (issue #19): the libraries ``ot_flow.flow`` and ``ot_flow.nsgf`` import
nothing above themselves, and only the command line imports the experiment harness and the CLI.
Every import is read from the source with ``ast``, late ones inside functions included."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path, module):
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            yield node.lineno, [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if getattr(func, "attr", getattr(func, "id", None)) in ("import_module", "__import__"):
                yield node.lineno, [node.args[0].value]


def _within(name, package):
    return name == package or name.startswith(package + ".")


def _forbidden(module):
    """The packages that ``module`` must not import."""
    harness = ("ot_flow.cli", "ot_flow.__main__")
    if module in harness or _within(module, "ot_flow.experiments"):
        return ()
    if _within(module, "ot_flow.flow"):
        return ("ot_flow.nsgf", "ot_flow.experiments") + harness
    return ("ot_flow.experiments",) + harness


def test_libraries_import_nothing_above_themselves():
    offending = []
    for path in sorted((ROOT / "ot_flow").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for line, names in _imports(path, module):
            offending += [f"{path.relative_to(ROOT)}:{line} imports {name}" for name in names
                          if any(_within(name, above) for above in _forbidden(module))]
    assert not offending, "\n".join(offending)


# The floors, bottom up: a module may import its own floor and those below, never one above.
# ``ot_flow/__init__.py`` gathers the public names of every floor and is no floor itself.
FLOORS = [("ot_flow._extension", "ot_flow.distributed"), ("ot_flow.ops",), ("ot_flow.solvers",),
          ("ot_flow.samplers",), ("ot_flow.data",), ("ot_flow.flow",), ("ot_flow.nsgf",),
          ("ot_flow.experiments",), ("ot_flow.cli", "ot_flow.__main__")]
LONGEST_FILE = 400


def _floor(name):
    for level, packages in enumerate(FLOORS):
        if any(_within(name, p) for p in packages):
            return level
    return None


def test_every_import_goes_down_the_floors():
    offending = []
    for path in sorted((ROOT / "ot_flow").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        own = _floor(module)
        if own is None:
            continue
        for line, names in _imports(path, module):
            above = [n for n in names if (_floor(n) or 0) > own]
            offending += [f"{path.relative_to(ROOT)}:{line} imports {name}" for name in above]
    assert not offending, "\n".join(offending)


def test_no_file_is_longer_than_the_limit():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for path in sorted((ROOT / "ot_flow").rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > LONGEST_FILE]
    assert not long, "\n".join(long)
