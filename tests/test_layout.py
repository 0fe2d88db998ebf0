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


def test_no_import_circle_between_modules():
    """The module graph (a package's own __init__ left out: it imports its modules by design) has no cycle."""
    mods = repo_modules()
    graph = {}
    for m, p in mods.items():
        own = m if m in PACKAGES else m.split(".")[0]
        graph[m] = {t for t in imports_of(m, p, mods) if t != own}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for t in graph[m]:
            assert state.get(t) != "open", f"import circle: {' -> '.join(path + [m, t])}"
            if t not in state:
                visit(t, path + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_floors_are_visible_in_files():
    """What attacks need (precision, modes, warp, EOT, argument types) sits in modules that import no set-up code."""
    mods = repo_modules()
    for low in ("utils.precision", "utils.modes", "utils.argtypes", "utils.flow", "utils.eot"):
        assert not imports_of(low, mods[low], mods), f"{low} imports repository modules"
    assert "utils.datasets" not in imports_of("attacks.registry", mods["attacks.registry"], mods)
    with open(mods["attacks.registry"]) as f:
        assert "class Uncorrected" not in f.read()  # a training wrapper, not a registration


def test_the_readme_map_names_files_and_definitions_that_exist():
    """Every "Where is ..." line of the README names a file and the functions or classes it holds: each exists."""
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = [ln for ln in text.split("Where is ...", 1)[1].split("\n\n", 1)[0].splitlines() if ln.startswith("- ")]
    assert len(lines) >= 6
    for line in lines:
        pairs, path = [], None
        for i, token in enumerate(line.split("`")):
            if i % 2 and token.endswith(".py"):
                path = token
            elif i % 2 and path:
                pairs.append((path, token))
        assert pairs, line
        for path, name in pairs:
            tree = ast.parse(open(os.path.join(ROOT, path)).read())
            defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert name.split(".")[-1] in defined, f"README map: {path} has no {name}"
