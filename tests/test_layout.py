"""The house stays easy to find one's way in: no import cycles, `annotator` never imports `review`, `ml` never imports
Django, benchmarks live in bench/, and every module imports on its own whatever was imported before it."""
import ast
import random
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("annotator", "review", "ml", "bench", "config")


def modules() -> dict[str, ast.Module]:
    """Every module of the project's packages (migrations aside: Django loads them), by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def import_graph() -> dict[str, set[str]]:
    """Which project modules each module imports, at the top or inside a function alike: an import hidden in a
    function still ties the two modules together."""
    sources = modules()
    graph = {name: set() for name in sources}
    for name, tree in sources.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from package import module` names a module; `from module import function` the module itself.
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in sources else node.module
                           for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in sources and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back_through_others():
    assert cycles(import_graph()) == []


def test_the_annotator_app_imports_nothing_from_review():
    offending = {name: sorted(t for t in targets if t.split(".")[0] == "review")
                 for name, targets in import_graph().items() if name.split(".")[0] == "annotator"}
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_the_engine_imports_no_django_and_nothing_of_the_app():
    for name, tree in modules().items():
        if name.split(".")[0] != "ml":
            continue
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.split(".")[0] in ("django", "rest_framework", "annotator", "review")}, name


def test_benchmarks_live_in_bench_not_in_the_apps():
    assert [p.name for package in ("annotator", "review") for p in (ROOT / package).rglob("bench*")] == []
    assert {p.stem for p in (ROOT / "bench").glob("*.py")} >= {"load", "scale", "editor"}


def test_every_task_can_be_sent_by_name_from_a_fresh_web_process():
    """annotator.enqueue sends tasks by their registered names: a web process that imported nothing else must know
    them, or an upload would fail to queue its job."""
    code = ("import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup(); "
            "from celery import current_app; from annotator import enqueue; "
            "print(all(name in current_app.tasks for name in "
            "(enqueue.JOB_ANNOTATE, enqueue.TRAINING_RUN, enqueue.PROJECT_REANNOTATE)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-3000:]


def test_every_module_imports_in_any_order():
    """All modules in one fresh interpreter, in three orders: a module that only works after another was imported
    fails in one of them."""
    names = sorted(modules())
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    for order in (names, names[::-1], shuffled):
        code = ("import os, importlib, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); "
                "django.setup(); [importlib.import_module(name) for name in %r]" % order)
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
