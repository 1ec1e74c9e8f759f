"""The modules of ``gan_prior`` and of ``portrait3d`` import one another one way: no cycle, and the
layer order each package's docstring writes down (``Layers:``); ``gan_prior`` never imports
threestudio."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gan_prior"
PACKAGES = ("gan_prior", "portrait3d")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, name: str) -> set[str]:
    """Modules that ``path`` imports, at any depth (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import x` names a module
    return found


def _package_modules(package: str) -> dict:
    """``{module name: path}`` of the package's Python modules (data folders such as
    portrait3d/cpu_stubs, which hold stand-ins for other packages, are not its modules)."""
    root = ROOT / package
    return {
        _module_name(p): p
        for p in root.rglob("*.py")
        if (p.parent == root or (p.parent / "__init__.py").exists()) and "cpu_stubs" not in p.parts
    }


def import_graph(package: str = "gan_prior") -> dict[str, set[str]]:
    modules = _package_modules(package)
    graph = {}
    for name, path in modules.items():
        deps = {m for m in _imports(path, name) if m in modules and m != name}
        graph[name] = {d for d in deps if d != package} if name != package else deps
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layers(package: str) -> list[tuple[str, list[str]]]:
    """The ``Layers:`` block of the package's docstring: ``[(layer, [modules])]``, top (lowest) first.
    A layer is a line ``    name  a, b, c``; a line indented further continues the one before."""
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    block = doc.split("Layers:", 1)[1].split("\n\n", 2)[1]
    found: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        m = re.match(r"^ {4}(\S.*?) {2,}(\S.*)$", line)
        if m:
            found.append((m.group(1), []))
        names = (m.group(2) if m else line).split(",")
        found[-1][1].extend(n.strip() for n in names if n.strip())
    return found


def layer_violations(package: str, graph: dict[str, set[str]], order: list[tuple[str, list[str]]]) -> list:
    """Imports of a module in a lower layer than the importer's own, as readable lines."""
    rank = {f"{package}.{m}": i for i, (_, names) in enumerate(order) for m in names}
    return [
        f"{name} ({order[rank[name]][0]}) imports {dep} ({order[rank[dep]][0]})"
        for name, deps in sorted(graph.items())
        for dep in sorted(deps)
        if name in rank and dep in rank and rank[dep] > rank[name]
    ]


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_layer_violations_names_an_upward_import():
    order = [("base", ["a"]), ("top", ["b"])]
    assert layer_violations("p", {"p.a": set(), "p.b": {"p.a"}}, order) == []
    assert layer_violations("p", {"p.a": {"p.b"}, "p.b": set()}, order) == ["p.a (base) imports p.b (top)"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = import_graph(package)
    assert len(graph) > 5, graph
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in {package}: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_import_down_the_layers_written_in_the_docstring(package):
    graph = import_graph(package)
    order = layers(package)
    listed = [f"{package}.{m}" for _, names in order for m in names]
    assert len(listed) == len(set(listed)), f"a module is listed twice in {package}'s Layers: {listed}"
    modules = set(graph) - {package}
    assert modules == set(listed), (
        f"{package}/__init__.py's Layers must list every module once: missing "
        f"{sorted(modules - set(listed))}, not modules {sorted(set(listed) - modules)}"
    )
    violations = layer_violations(package, graph, order)
    assert violations == [], f"{package}: imports against the layer order: {violations}"


def test_the_gan_prior_layers_are_base_model_files_stages_command_line():
    assert [name for name, _ in layers("gan_prior")] == ["base", "model", "files", "stages", "command line"]


def test_the_package_shared_concepts_import_nothing_above_them():
    graph = import_graph("portrait3d")
    assert graph["portrait3d.errors"] == set()
    assert graph["portrait3d.trial"] == {"portrait3d.errors"}
    assert graph["portrait3d.manifest"] <= {"portrait3d.errors", "portrait3d.trial"}


def test_safe_readers_know_no_model():
    """The checkpoint readers import nothing from gan_prior: the models depend on them, not back."""
    assert import_graph()["gan_prior.checkpoint"] == set()


def test_gan_prior_never_imports_threestudio():
    for path in PACKAGE.rglob("*.py"):
        roots = {m.split(".")[0] for m in _imports(path, _module_name(path))}
        assert "threestudio" not in roots, f"{path} imports threestudio"
