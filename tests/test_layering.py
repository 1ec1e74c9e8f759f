"""The modules of ``gan_prior`` import one another one way (no cycle) and never threestudio."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gan_prior"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, name: str) -> set[str]:
    """gan_prior modules that ``path`` imports, at any depth (inside functions too)."""
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


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = {m for m in _imports(path, name) if m in modules and m != name}
        graph[name] = {d for d in deps if d != "gan_prior"} if name != "gan_prior" else deps
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


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_gan_prior_has_no_import_cycle():
    graph = import_graph()
    assert {"gan_prior.checkpoint", "gan_prior.generator", "gan_prior.generator_config"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in gan_prior: " + " -> ".join(cycle)


def test_safe_readers_know_no_model():
    """The checkpoint readers import nothing from gan_prior: the models depend on them, not back."""
    assert import_graph()["gan_prior.checkpoint"] == set()


def test_gan_prior_never_imports_threestudio():
    for path in PACKAGE.rglob("*.py"):
        roots = {m.split(".")[0] for m in _imports(path, _module_name(path))}
        assert "threestudio" not in roots, f"{path} imports threestudio"
