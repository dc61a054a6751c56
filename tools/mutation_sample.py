#!/usr/bin/env python
"""Mutation score of the test suite on a random sample of mutants (issue 11: "break the code, see the
test fail"). A mutant changes one operator or constant in one line of the code under test; it is
*killed* when a test that runs that line fails (or errors) with the change, *survived* otherwise.

1. Which tests run which line: the chosen test files once under pytest-cov with per-test contexts
   (`--cov-context=test`). Lines run only by a subprocess (train_kd.py launched by a test) are not seen;
   mutants there are reported as "not covered", not as survivors.
2. Mutants: every BinOp (+ - * / // ** swapped), comparison (< <= > >= == != is/in negated), and/or,
   unary minus, True/False and numeric constant (n -> n + 1, x -> 2x, 0 -> 1) inside a function body of
   the target files (not in messages); a seeded random sample of N among the covered ones. The change
   is written into the text, every other character kept.
3. Each mutant is written into the file, only the tests covering its line run (pytest -x), and the
   original file is restored. Everything happens in a copy of the tree (--workdir), never in this one.

Needs `pip install pytest-cov` (a development tool, not in requirements.txt).

Usage:
    python tools/mutation_sample.py --n 40 --seed 0                         # distill/ and utils/losses/yolov5.py
    python tools/mutation_sample.py --targets utils/losses/yolov5.py --tests tests/test_loss.py --n 10
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
            ast.Pow: ast.Mult, ast.MatMult: ast.Mult}
SWAP_CMP = {ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
            ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def default_targets() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "distill").rglob("*.py")) + ["utils/losses/yolov5.py"]


def default_tests(targets: list[str]) -> list[str]:
    """Test files that import a target module (dotted name or 'from distill import')."""
    names = {t[:-3].replace("/", ".") for t in targets}
    out = []
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        text = f.read_text()
        if any(n in text for n in names) or ("from distill import" in text and any(t.startswith("distill/") for t in targets)):
            out.append(str(f.relative_to(ROOT)))
    return out


def _in_function(tree: ast.AST) -> set[int]:
    """ids of the nodes inside function bodies (docstrings and decorators excluded)."""
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = fn.body[1:] if (fn.body and isinstance(fn.body[0], ast.Expr)
                                   and isinstance(fn.body[0].value, ast.Constant)) else fn.body
            for stmt in body:
                inside.update(id(n) for n in ast.walk(stmt))
    skip = set()  # f-strings, messages of raise/log calls: changing them changes no result
    for n in ast.walk(tree):
        if isinstance(n, (ast.JoinedStr, ast.Raise, ast.Assert)) or (
                isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("info", "warning", "debug")):
            skip.update(id(m) for m in ast.walk(n))
    return inside - skip


def mutants(path: str, root: Path = ROOT) -> list[dict]:
    """All single-node mutants of a file: {'file', 'line', 'kind', 'index'} (index: the node's order in
    ast.walk, so apply() finds it again in a fresh parse)."""
    tree = ast.parse((root / path).read_text())
    ok = _in_function(tree)
    out = []
    for i, n in enumerate(ast.walk(tree)):
        if id(n) not in ok:
            continue
        kind = None
        if isinstance(n, ast.BinOp) and type(n.op) in SWAP_BIN:
            kind = f"{type(n.op).__name__}->{SWAP_BIN[type(n.op)].__name__}"
        elif isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in SWAP_CMP:
            kind = f"{type(n.ops[0]).__name__}->{SWAP_CMP[type(n.ops[0])].__name__}"
        elif isinstance(n, ast.BoolOp):
            kind = "and<->or"
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            kind = "drop unary minus"
        elif isinstance(n, ast.Constant) and isinstance(n.value, bool):
            kind = "not bool"
        elif isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            kind = "number"
        if kind:
            out.append({"file": path, "line": n.lineno, "kind": kind, "index": i})
    return out


OP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**",
           ast.MatMult: "@", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
           ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


def _offset(lines: list[str], line: int, col: int) -> int:
    """Character offset of (1-based line, utf-8 byte column) in the joined source."""
    return sum(len(x) for x in lines[:line - 1]) + len(lines[line - 1].encode()[:col].decode())


def apply(source: str, index: int) -> str | None:
    """source with the mutation of node `index` (as listed by mutants()) written into the text, every other
    character kept (comments too); None when the operator is not found where expected."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == index)

    def gap_replace(a: ast.AST, b: ast.AST, old: str, new: str) -> str | None:
        lo, hi = _offset(lines, a.end_lineno, a.end_col_offset), _offset(lines, b.lineno, b.col_offset)
        gap = source[lo:hi]
        k = gap.find(old)
        if k < 0 or "#" in gap:
            return None
        return source[:lo] + gap[:k] + new + gap[k + len(old):] + source[hi:]

    if isinstance(node, ast.BinOp):
        return gap_replace(node.left, node.right, OP_TEXT[type(node.op)], OP_TEXT[SWAP_BIN[type(node.op)]])
    if isinstance(node, ast.Compare):
        old, new = OP_TEXT[type(node.ops[0])], OP_TEXT[SWAP_CMP[type(node.ops[0])]]
        return gap_replace(node.left, node.comparators[0], f" {old} " if old.isalpha() or " " in old else old,
                           f" {new} " if new.isalpha() or " " in new else new)
    if isinstance(node, ast.BoolOp):
        old = "and" if isinstance(node.op, ast.And) else "or"
        return gap_replace(node.values[0], node.values[1], old, "or" if old == "and" else "and")
    lo, hi = _offset(lines, node.lineno, node.col_offset), _offset(lines, node.end_lineno, node.end_col_offset)
    text = source[lo:hi]
    if isinstance(node, ast.UnaryOp):
        return source[:lo] + text[1:] if text.startswith("-") else None
    v = node.value
    if isinstance(v, bool):
        new = str(not v)
    elif isinstance(v, int):
        new = str(v + 1)
    else:
        new = repr(2 * v) if v else "1.0"
    return source[:lo] + new + source[hi:]


def coverage_map(work: Path, tests: list[str], timeout: int) -> dict[tuple[str, int], list[str]]:
    """(file, line) -> node ids of the tests that ran it."""
    import coverage

    cov_file = work / ".coverage.mut"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--cov=distill", "--cov=utils", "--cov-context=test", "--cov-report=", *tests]
    print(f"coverage run: {len(tests)} test files ...", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, check=False,
                       env={**os.environ, "COVERAGE_FILE": str(cov_file)})
    print(f"  {time.time() - t0:.0f} s, {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]}")
    data = coverage.CoverageData(basename=str(cov_file))
    data.read()
    out = {}
    for f in data.measured_files():
        rel = str(Path(f).resolve().relative_to(work.resolve()))
        for line, ctxs in data.contexts_by_lineno(f).items():
            ids = sorted({c.rsplit("|", 1)[0] for c in ctxs if c})
            if ids:
                out[(rel, line)] = ids
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=None, help="files to mutate (default: distill/**/*.py, utils/losses/yolov5.py)")
    p.add_argument("--tests", nargs="+", default=None, help="test files (default: those importing a target)")
    p.add_argument("--n", type=int, default=40, help="mutants in the sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=600, help="seconds per mutant's test run")
    p.add_argument("--workdir", default=None, help="an empty folder for the copy of the tree (default: a temporary one)")
    p.add_argument("--out", default=None, help="write the per-mutant results here (JSON)")
    opt = p.parse_args(argv)
    if importlib.util.find_spec("pytest_cov") is None:
        sys.exit("tools/mutation_sample.py needs pytest-cov (per-test coverage picks each mutant's tests): "
                 "pip install pytest-cov")
    targets = opt.targets or default_targets()
    missing = [t for t in (opt.targets or []) + (opt.tests or []) if not (ROOT / t).is_file()]
    if missing:
        sys.exit(f"--targets/--tests: not a file in the repository: {', '.join(missing)}")
    tests = opt.tests or default_tests(targets)
    base = Path(opt.workdir or tempfile.mkdtemp(prefix="mutation-"))
    if base.exists() and any(base.iterdir()):
        sys.exit(f"--workdir {base}: not empty (the tree is copied there)")
    work = base / "tree"
    work.mkdir(parents=True)
    if (ROOT.parent / "shared").is_dir():  # the reference fixtures, where the tests look for them
        (base / "shared").symlink_to(ROOT.parent / "shared")
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    for extra in ("datasets",):  # generated data the tests may reuse
        if (ROOT / extra).exists():
            (work / extra).symlink_to(ROOT / extra)
    covered = coverage_map(work, tests, timeout=3600)
    pool = [m for t in targets for m in mutants(t, work)]
    live = [m for m in pool if (m["file"], m["line"]) in covered]
    print(f"mutants: {len(pool)} in {len(targets)} files, {len(live)} on lines the tests run")
    sample = random.Random(opt.seed).sample(live, min(opt.n + opt.n // 4, len(live)))  # spares for skipped ones
    results = []
    for m in sample:
        if len(results) == opt.n:
            break
        path = work / m["file"]
        original = path.read_text()
        mutated = apply(original, m["index"])
        if mutated is None or mutated == original:
            continue
        try:
            compile(mutated, str(path), "exec")  # a mutant that is not Python is no test of the tests
        except SyntaxError:
            continue
        try:
            path.write_text(mutated)
            ids = covered[(m["file"], m["line"])]
            t0 = time.time()
            try:
                r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *ids],
                                   cwd=work, capture_output=True, text=True, timeout=opt.timeout, check=False)
                status = "killed" if r.returncode != 0 else "survived"
            except subprocess.TimeoutExpired:
                status = "timeout"
        finally:
            path.write_text(original)
        m.update(status=status, tests=len(ids), seconds=round(time.time() - t0, 1),
                 code=original.splitlines()[m["line"] - 1].strip()[:100])
        results.append(m)
        print(f"[{len(results)}/{opt.n}] {status:8s} {m['file']}:{m['line']} {m['kind']} ({len(ids)} tests, "
              f"{m['seconds']} s)  {m['code']}", flush=True)
    killed = sum(r["status"] in ("killed", "timeout") for r in results)
    print(f"\nmutation score: {killed}/{len(results)} = {killed / max(len(results), 1):.0%} killed "
          f"(seed {opt.seed}; {len(pool) - len(live)} of {len(pool)} mutants on lines no in-process test runs)")
    for r in results:
        if r["status"] == "survived":
            print(f"  survived: {r['file']}:{r['line']} {r['kind']}: {r['code']}")
    if opt.out:
        Path(opt.out).write_text(json.dumps(results, indent=1))
    if not opt.workdir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
