"""Size limits of the package's source, and self-contained documentation; read with ``ast`` only (no JAX).

* every ``.py`` file under ``spark_torch/``: at most :data:`MAX_FILE_LINES` lines;
* every function or method (nested ones included): at most :data:`MAX_FUNCTION_LINES` lines, from its
  ``def`` to its last line (decorators excluded);
* every class: at most :data:`MAX_CLASS_LINES` lines, from its ``class`` line to its last line;
* no file under ``spark_torch/``, ``tests/``, ``notebooks/``, nor README.md, refers to a document that
  is not in the repository (:data:`EXTERNAL_REFERENCES`).
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spark_torch"

MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 250

#: References to documents outside the repository (case-insensitive). Each pattern is assembled from
#: pieces so that this file does not match its own patterns.
EXTERNAL_REFERENCES = tuple(re.compile(pattern, re.IGNORECASE) for pattern in (
    "BRIDGE" + "_NOTES",
    "SPEC" + r"\.md",
    "SPEC" + r"\s*§",
    "STYLE" + r"\.md",
    r"\b" + "iss" + r"ue\s*#\s*\d+",  # the word, then '#' and a number
    r"\b" + "iss" + r"ue\s+\d+",  # the word, then a number
))


def _python_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _definitions(kinds):
    """``(file, qualified name, lines)`` of every definition of ``kinds`` in the package, nested ones included."""
    found = []

    def visit(node, path, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
                if isinstance(child, kinds):
                    found.append((_relative(path), name[:-1], _lines(child)))
            visit(child, path, name)

    for path in _python_files():
        visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), path, "")
    return found


def test_no_python_file_in_the_package_is_too_long():
    too_long = [f"{_relative(p)}: {n} lines" for p in _python_files()
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not too_long, f"files over {MAX_FILE_LINES} lines: " + "; ".join(too_long)


def test_no_function_is_too_long():
    too_long = [f"{path}::{name}: {n} lines" for path, name, n in _definitions((ast.FunctionDef, ast.AsyncFunctionDef))
                if n > MAX_FUNCTION_LINES]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(too_long)


def test_no_class_is_too_long():
    too_long = [f"{path}::{name}: {n} lines" for path, name, n in _definitions(ast.ClassDef) if n > MAX_CLASS_LINES]
    assert not too_long, f"classes over {MAX_CLASS_LINES} lines: " + "; ".join(too_long)


def _documented_files():
    """Every text file under spark_torch/, tests/ and notebooks/, and README.md."""
    files = [ROOT / "README.md"]
    for folder in ("spark_torch", "tests", "notebooks"):
        files += (p for p in (ROOT / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts)
    for path in sorted(files):
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file (e.g. a built library) documents nothing
            continue


def test_no_reference_to_documents_outside_the_repository():
    found = [f"{_relative(path)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)!r}"
             for path, text in _documented_files() for pattern in EXTERNAL_REFERENCES
             for match in pattern.finditer(text)]
    assert not found, "references to documents outside the repository: " + "; ".join(found)


def test_the_checks_see_the_package():
    """The scans above are not vacuous: they find the package's modules, functions, methods and classes,
    and each pattern matches the reference it stands for."""
    assert len(_python_files()) > 20
    functions = {(path, name) for path, name, _ in _definitions((ast.FunctionDef, ast.AsyncFunctionDef))}
    assert {("spark_torch/kernel/lax_loops.py", "reverse_loop"),
            ("spark_torch/config.py", "IzhikevichSomaConfig.validate")} <= functions
    assert ("spark_torch/kernel/model.py", "IzhikevichParams") in {(p, n) for p, n, _ in _definitions(ast.ClassDef)}
    examples = ("BRIDGE" + "_NOTES.md", "see SP" + "EC.md", "SPEC" + " §4", "STYLE" + ".md", "Iss" + "ue #7",
                "iss" + "ue 12")
    assert all(pattern.search(text) for pattern, text in zip(EXTERNAL_REFERENCES, examples, strict=True))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, modules) -> set:
    """The package modules that ``path`` imports, anywhere in the file (function-level imports included):
    ``from package import name`` imports the module ``package.name`` if there is one, else ``package``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def test_the_package_has_no_import_cycle():
    """The graph of imports between the package's modules (a module imports the modules it names; importing a
    submodule does not count as importing its package's ``__init__``) is acyclic."""
    modules = {_module_name(p): p for p in _python_files()}
    graph = {name: sorted(m for m in _imports(path, name, modules) if m in modules and m != name)
             for name, path in modules.items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
