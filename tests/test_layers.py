"""The import layers of the repository (README "Architecture"):

    root scripts (train.py, val.py, ...) -> engine/ -> distill/ -> models/ -> utils/

Every import of every project module is read from its source (AST, so imports inside functions count too)
and must point to the module's own layer or one below it. No two files import each other through any
chain (an import circle), no package module imports a root script, and no script imports another.
tests/, bench/, tools/ and examples/ are clients of the layers, not part of them.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("utils", "models", "distill", "engine")  # lowest first; root scripts sit above all of them
CLIENTS = ("tests", "bench", "tools", "examples")


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every tracked (or, outside git, present) .py file of the layers and root."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
        files = [Path(f) for f in out if (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(root) for p in root.rglob("*.py")]
    return {module_name(f): f for f in files if f.parts[0] not in CLIENTS and not f.parts[0].startswith(".")}


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[int, str, str]]:
    """(line, imported project module, the statement as written) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            text = "import " + ", ".join(targets)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]  # a submodule, else the package itself
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.append((node.lineno, t, text))
                if isinstance(node, ast.ImportFrom):
                    break  # 'from pkg import sub' counts once: the submodule if there is one, else pkg
    return found


def layer(name: str, modules: dict[str, Path]) -> int:
    """0..3 for utils, models, distill, engine; 4 for a root script."""
    top = name.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


def violations(root: Path) -> list[str]:
    """Every upward import, import of a script and import circle, each naming the file, line and import."""
    modules = project_modules(root)
    scripts = {m for m, f in modules.items() if len(f.parts) == 1}
    graph: dict[str, set[str]] = {}
    bad = []
    for name, rel in sorted(modules.items()):
        graph[name] = set()
        for line, target, text in imports_of(root / rel, name, modules):
            graph[name].add(target)
            where = f"{rel}:{line}: {text}"
            if target in scripts:
                kind = "a script imports another script" if name in scripts else "a package module imports a script"
                bad.append(f"{where} ({kind}: {modules[target]})")
            elif name not in scripts and layer(target, modules) > layer(name, modules):
                bad.append(f"{where} (upward: {rel.parts[0]}/ must not import {modules[target].parts[0]}/)")
    bad += [f"import circle: {' -> '.join(str(modules[m]) for m in (*c, c[0]))}" for c in circles(graph)]
    return bad


def circles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a module path."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:  # walk inside the component from its first module back to it
        start = min(comp)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in comp)
            back = [w for w in nxt if w == start]
            if back and len(path) > 1:
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:
                break
            path.append(step)
            seen.add(step)
        out.append(tuple(path))
    return out


def test_imports_follow_the_layers():
    bad = violations(ROOT)
    assert not bad, "imports against the layers (scripts -> engine -> distill -> models -> utils):\n" + "\n".join(bad)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(src)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"utils/__init__.py": "", "utils/a.py": "def f():\n    from models.b import g\n", "models/__init__.py": "",
      "models/b.py": ""}, "utils/a.py:2: from models.b import g (upward"),
    ({"models/__init__.py": "", "models/x.py": "from models import y\n", "models/y.py": "import models.x\n"},
     "import circle: models/x.py -> models/y.py -> models/x.py"),
    ({"engine/__init__.py": "", "engine/t.py": "import val\n", "val.py": ""},
     "engine/t.py:1: import val (a package module imports a script"),
    ({"train.py": "def main():\n    import train_kd\n", "train_kd.py": ""},
     "train.py:2: import train_kd (a script imports another script"),
    ({"distill/__init__.py": "", "distill/a.py": "from . import b\n", "distill/b.py": "from .c import k\n",
      "distill/c.py": "def k():\n    from distill.a import z\n"},
     "import circle: distill/a.py -> distill/b.py -> distill/c.py -> distill/a.py"),
])
def test_the_check_names_each_kind_of_violation(tmp_path, files, expected):
    """The checker itself: deferred imports, relative imports and chains of three are seen, and the
    message names the file, the line and the import."""
    bad = violations(_tree(tmp_path, files))
    assert any(b.startswith(expected) for b in bad), bad


def test_the_check_accepts_downward_imports(tmp_path):
    files = {"train.py": "from engine.t import run\n", "engine/__init__.py": "", "engine/t.py": "import distill.d\n",
             "distill/__init__.py": "", "distill/d.py": "from models.m import M\n", "models/__init__.py": "",
             "models/m.py": "from utils import u\n", "utils/__init__.py": "", "utils/u.py": "import os\n"}
    assert violations(_tree(tmp_path, files)) == []
