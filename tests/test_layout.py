"""Imports point one way: no module of attacks/ or models/ reaches a utils/ module that imports attacks/ or models/
back (so the warp, EOT and runtime helpers sit below the attacks), and the loop knows no method."""
import ast
import os
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("attacks", "models", "utils")


def repo_modules():
    mods = {}
    for pkg in PACKAGES:
        for f in os.listdir(os.path.join(ROOT, pkg)):
            if f.endswith(".py"):
                name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                mods[name] = os.path.join(ROOT, pkg, f)
    return mods


def imports_of(name, path, mods):
    """Repository modules imported by module ``name`` (absolute and relative imports, any depth in the file)."""
    pkg = name if name in PACKAGES else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{pkg}.{base}" if base else pkg
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t in mods:
                out.add(t)
                if "." in t:
                    out.add(t.split(".")[0])  # importing pkg.mod runs pkg/__init__.py
    return out - {name}


def test_attacks_and_models_never_reach_back_through_utils():
    mods = repo_modules()
    graph = {m: imports_of(m, p, mods) for m, p in mods.items()}
    for top in (m for m in mods if m.split(".")[0] in ("attacks", "models")):
        todo, seen = [u for u in graph[top] if u.startswith("utils")], set()
        while todo:
            u = todo.pop()
            if u in seen:
                continue
            seen.add(u)
            back = [v for v in graph[u] if v.split(".")[0] in ("attacks", "models")]
            assert not back, f"{top} imports {u}, which imports {back} back"
            todo += [v for v in graph[u] if v.startswith("utils")]


def test_the_training_loop_knows_no_method():
    """No identifier of the loop's code names a method or its schedule (prose may explain where they live)."""
    with open(os.path.join(ROOT, "utils", "training.py")) as f:
        names = {t.string.lower() for t in tokenize.generate_tokens(f.readline) if t.type == tokenize.NAME}
    for word in ("gsem", "reload", "mart", "fgr", "stage", "carry"):
        assert not [n for n in names if word in n], word
