"""The layout tells the truth about the architecture: imports go one way (core <- shm <-
services <- workers), consumers bind to the cluster layer only through its narrow API,
nobody reaches into another module's private members, and no class grows past what a
reader takes in at one sitting."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("core", "shm", "services", "workers")
MAX_CLASS_LINES = 300
# attribute names that look private but belong to other libraries
FOREIGN_PRIVATE = {"_exit", "_getvalue"}
# The `fastcluster` command (DESIGN.md puts it in core) starts the other layers: it
# imports them lazily, after the configuration is valid.
ENTRY_POINT = "fastcluster.core.cli"


def sources() -> list[pathlib.Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "fastcluster." + ".".join(parts)


def runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every import, except those under `if TYPE_CHECKING:`."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skip.update(id(n) for n in ast.walk(inner))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def allowed(importer: str, imported: str) -> bool:
    if not imported.startswith("fastcluster.") or importer == ENTRY_POINT:
        return True
    layer = importer.split(".")[1]
    target = imported.split(".")[1]
    order = {"core": 0, "shm": 1, "services": 2, "workers": 3}
    if order[target] > order[layer]:
        return False
    if layer != "services" or target != "services":
        return True
    mine = importer.split(".")[2] if importer.count(".") >= 2 else ""
    theirs = imported.split(".")[2] if imported.count(".") >= 2 else ""
    if theirs == "cluster" and mine != "cluster":
        # consumers see the cluster layer only through its API
        return imported.startswith("fastcluster.services.cluster.api") or \
            imported == "fastcluster.services.cluster"
    if mine == "cluster":
        return theirs in ("cluster", "")  # the cluster layer serves; it uses no consumer
    if importer == "fastcluster.services.mi.registry":
        return theirs in ("mi", "")
    return True


def test_imports_go_one_way() -> None:
    wrong = []
    for path in sources():
        importer = module_of(path)
        for line, imported in runtime_imports(ast.parse(path.read_text())):
            if not allowed(importer, imported):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_wrong_imports() -> None:
    assert not allowed("fastcluster.core.sip", "fastcluster.shm.table")
    assert not allowed("fastcluster.services.sip.registrar", "fastcluster.services.cluster.node")
    assert not allowed("fastcluster.services.cluster.sync", "fastcluster.services.mi.registry")
    assert not allowed("fastcluster.services.mi.registry", "fastcluster.services.sip.usrloc")
    assert not allowed("fastcluster.shm.node", "fastcluster.workers.master")
    assert allowed("fastcluster.services.mi.clusterer_cmds", "fastcluster.services.cluster.api")
    assert allowed("fastcluster.workers.cluster", "fastcluster.services.cluster.node")


def test_no_private_member_of_another_module_is_used() -> None:
    wrong = []
    for path in sources():
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree)
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        defined |= {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Attribute)}
        defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        defined |= {n.target.attr for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
                    and isinstance(n.target, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in ("self", "cls"):
                continue
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                    not node.attr.startswith("__") and node.attr not in FOREIGN_PRIVATE and \
                    node.attr not in defined:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_classes_stay_readable(path: pathlib.Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_CLASS_LINES, f"class {node.name}: {lines} lines"


def test_services_holds_the_four_packages() -> None:
    services = ROOT / "services"
    packages = sorted(p.name for p in services.iterdir() if (p / "__init__.py").exists())
    modules = sorted(p.name for p in services.glob("*.py") if p.name != "__init__.py")
    assert packages == ["cluster", "mi", "script", "sip"] and modules == []
    for name in packages:
        doc = ast.get_docstring(ast.parse((services / name / "__init__.py").read_text()))
        assert doc and "import" in doc, f"services/{name} says what it may import"
