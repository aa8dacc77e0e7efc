"""The layer contract: imports go down the list below, never up or sideways, and never in a cycle.

Every module under rfm/ and serving/ is parsed with `ast`; every import counts, including imports inside functions
(a function-local import is still a dependency, it only hides a cycle until that function runs) and
`importlib.import_module("literal")`. Packages, top to bottom; within one layer, `|` separates siblings that must not
import each other, and modules written together in one group may import each other (but not in a cycle):

    cli -> serving -> eval | export | robots -> sim -> train | runtime -> data | model -> config | client -> imaging
    -> constants

rfm.sim is the simulator plug-in: it may use everything below it; the core (data, model, train, runtime) never
imports it (the trainer finds simulator aids through an entry point). rfm.client is the robot-side SDK: it imports
nothing from rfm but itself, rfm.imaging (the frame fit robot and server share) and rfm.constants.
rfm.checkpoint and the `rfm` package's lazy names sit with the model.
The server imports the runtime, never training, simulator, evaluation or export code.
A new module that fits no layer fails the test: place it in LAYERS.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS = [  # top to bottom; "a.*" is package a and everything under it, a bare name is that one module
    "rfm.cli.*",
    "serving.*",
    "rfm.eval.* | rfm.export.* | rfm.robots",
    "rfm.sim.*",
    "rfm.train.* | rfm.runtime.*",
    "rfm.data.* | rfm rfm.checkpoint rfm.model.*",
    "rfm.config rfm.calibration | rfm.client.*",
    "rfm.imaging",
    "rfm.constants rfm._version rfm.processes rfm.install rfm.files rfm.progress",
]
ISOLATED = {"rfm.client.*": ("rfm.client.*", "rfm.imaging", "rfm.constants")}  # these may import nothing else of ours
FORBIDDEN = {"serving.*": ("rfm.train.*", "rfm.sim.*", "rfm.eval.*", "rfm.export.*")}  # below, but not for them


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    file: str  # its path, relative to the root scanned
    line: int
    target: str  # the imported module (the longest known module the import names)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` (a module, or a module's attribute) lies in; None if none does."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def collect_imports(root: Path, packages: list[str]) -> tuple[set[str], dict[str, str], list[Import]]:
    """(modules, module -> file, imports between them) of the top-level `packages` under `root`."""
    files = {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    found = []
    for module, path in files.items():
        is_pkg = path.name == "__init__.py"
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                names = [f"{prefix}.{a.name}" for a in node.names]  # a submodule, or a name in `prefix`
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                names = [node.args[0].value]
            for name in names:
                if name.split(".")[0] not in packages:
                    continue
                target = _resolve(name, known) or name
                if target != module:
                    found.append(Import(module, rel, node.lineno, target))
    return known, {m: p.relative_to(root).as_posix() for m, p in files.items()}, list(dict.fromkeys(found))


def _parse_layers(layers: list[str]) -> list[list[tuple[str, ...]]]:
    return [[tuple(group.split()) for group in layer.split("|")] for layer in layers]


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return module == pattern[:-2] or module.startswith(pattern[:-1])
    return module == pattern


def _place(module: str, layers: list[list[tuple[str, ...]]]) -> tuple[int, int] | None:
    """(layer index from the top, group index within it) of the most specific pattern naming `module`."""
    best, where = (-1, False), None
    for i, layer in enumerate(layers):
        for j, group in enumerate(layer):
            for pattern in group:
                specificity = (len(pattern.removesuffix(".*")), not pattern.endswith(".*"))  # "a.b" beats "a.b.*"
                if _matches(module, pattern) and specificity > best:
                    best, where = specificity, (i, j)
    return where


def _cycles(modules: set[str], imports: list[Import]) -> list[list[Import]]:
    """One cycle (as the imports along it) per strongly connected group of modules (Tarjan's algorithm)."""
    edges: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        if imp.target in modules:
            edges[imp.module].setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for m in sorted(modules):
        if m not in index:
            visit(m)
    out = []
    for group in groups:  # walk inside the group from its first module until a module repeats
        path, seen, v = [], {}, min(group)
        while v not in seen:
            seen[v] = len(path)
            nxt = min(w for w in edges[v] if w in group)
            path.append(edges[v][nxt])
            v = nxt
        out.append(path[seen[v]:])
    return out


def check_layers(root: Path, packages: list[str], layers: list[str], isolated: dict[str, tuple[str, ...]] | None = None,
                 forbidden: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Every breach of the contract under `root`, one line each, naming the importing file:line and the import."""
    modules, files, imports = collect_imports(root, packages)
    parsed = _parse_layers(layers)
    problems = [f"{files[m]}: module {m} is in no layer (add it to LAYERS)"
                for m in sorted(modules) if _place(m, parsed) is None]
    for imp in imports:
        src, dst = _place(imp.module, parsed), _place(imp.target, parsed)
        if src is None or dst is None:
            continue
        if dst[0] < src[0]:
            problems.append(f"{imp.where()}: {imp.module} imports {imp.target}, which is in a higher layer "
                            f"({layers[dst[0]]!r} is above {layers[src[0]]!r})")
        elif dst[0] == src[0] and dst[1] != src[1]:
            problems.append(f"{imp.where()}: {imp.module} imports {imp.target}, a sibling in the same layer "
                            f"({layers[src[0]]!r}): siblings must not import each other")
    for pattern, allowed in (isolated or {}).items():
        for imp in imports:
            if _matches(imp.module, pattern) and not any(_matches(imp.target, a) for a in allowed):
                problems.append(f"{imp.where()}: {imp.module} imports {imp.target}; {pattern} may import only "
                                f"{', '.join(allowed)}")
    for pattern, banned in (forbidden or {}).items():
        for imp in imports:
            hit = next((b for b in banned if _matches(imp.target, b)), None)
            if _matches(imp.module, pattern) and hit:
                problems.append(f"{imp.where()}: {imp.module} imports {imp.target}; {pattern} must not import {hit}")
    for cycle in _cycles(modules, imports):
        steps = ", ".join(f"{i.where()} imports {i.target}" for i in cycle)
        problems.append(f"import cycle {' -> '.join([i.module for i in cycle] + [cycle[0].module])}: {steps}")
    return problems


@functools.cache
def _all_problems() -> tuple[str, ...]:
    return tuple(check_layers(REPO, ["rfm", "serving"], LAYERS, ISOLATED, FORBIDDEN))


def _problems(kind: str) -> list[str]:
    return [p for p in _all_problems() if kind in p]


def test_every_module_has_a_layer():
    assert not _problems("in no layer"), "\n".join(_problems("in no layer"))


def test_no_import_goes_up_or_sideways():
    bad = _problems("higher layer") + _problems("sibling")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    bad = _problems("import cycle")
    assert not bad, "\n".join(bad)


def test_client_sdk_imports_only_itself():
    bad = _problems("may import only")
    assert not bad, "\n".join(bad)


def test_server_imports_no_training_simulator_eval_or_export_code():
    bad = _problems("must not import")
    assert not bad, "\n".join(bad)


def test_imports_are_found_where_they_hide():
    """The scan sees function-local and relative imports (the ones that hide cycles), with their lines."""
    _, _, imports = collect_imports(REPO, ["rfm", "serving"])
    found = {(i.module, i.target) for i in imports}
    assert ("rfm", "rfm.model.policy") in found  # inside a module __getattr__
    assert ("rfm.runtime", "rfm.runtime.torch_runner") in found
    assert ("serving.app", "serving.ws") in found


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_reports_upward_sideways_cycles_leaks_and_forbidden_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/top.py": "from pkg import low\nimport pkg.right\n",  # down: allowed by the layers, forbidden below
        "pkg/low.py": "import os\n\n\ndef f():\n    from pkg.top import x  # up, hidden in a function\n",
        "pkg/left/__init__.py": "",
        "pkg/left/a.py": "from . import b\n",  # a <-> b: a cycle inside one group
        "pkg/left/b.py": "def g():\n    from .a import thing\n",
        "pkg/right.py": "import pkg.left.a\n",  # a sibling
        "pkg/sdk/__init__.py": "from pkg.sdk import wire\n",
        "pkg/sdk/wire.py": "import importlib\nM = importlib.import_module('pkg.low')\n",  # down, but out of the SDK
        "pkg/stray.py": "",
    })
    layers = ["pkg.top", "pkg.left.* | pkg.right | pkg.sdk.*", "pkg.low pkg"]
    problems = check_layers(tmp_path, ["pkg"], layers, {"pkg.sdk.*": ("pkg.sdk.*",)}, {"pkg.top": ("pkg.right",)})
    text = "\n".join(problems)
    assert "pkg/stray.py: module pkg.stray is in no layer" in text
    assert "pkg/low.py:5: pkg.low imports pkg.top, which is in a higher layer" in text
    assert "pkg/right.py:1: pkg.right imports pkg.left.a, a sibling in the same layer" in text
    assert "pkg/sdk/wire.py:2: pkg.sdk.wire imports pkg.low; pkg.sdk.* may import only pkg.sdk.*" in text
    assert ("import cycle pkg.left.a -> pkg.left.b -> pkg.left.a: pkg/left/a.py:1 imports pkg.left.b, "
            "pkg/left/b.py:2 imports pkg.left.a") in text
    assert "import cycle pkg.low -> pkg.top -> pkg.low" in text
    assert "pkg/top.py:2: pkg.top imports pkg.right; pkg.top must not import pkg.right" in text
    assert len(problems) == 7, text


@pytest.mark.parametrize("layers", [["a.*", "a.b"], ["a.b", "a.*"], ["a.b.*", "a.b", "a.*"]])
def test_most_specific_pattern_places_a_module(layers):
    parsed = _parse_layers(layers)
    assert _place("a.b", parsed)[0] == layers.index("a.b")
    assert _place("a.c", parsed)[0] == layers.index("a.*")
    assert _place("a", parsed)[0] == layers.index("a.*")
    assert _place("ab", parsed) is None
