"""The layers of DESIGN.md §2, read from the source: who may import whom, and no import
circle anywhere (imports inside functions included).

Read statically (every `import` statement of every module), so a rule broken in a
rarely run branch fails here too. The one exception is a module's entry-point guard
(`if __name__ == "__main__":`): it runs only when the module is the program, as the top
of the program, never when another module imports it; so do `__main__` modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("codecsep_core", "storage", "jobs")
JOBS = {
    "jobs.ingest",
    "jobs.prompts",
    "jobs.separate",
    "jobs.export",
    "jobs.select",
    "jobs.report",
    "jobs.prepare_train",
    "jobs.train",
    "jobs.evaluate",
    "jobs.bench",
    "jobs.demo",
}
RUNS_OTHER_JOBS = ("jobs.demo", "jobs.bench")  # the demo runs them all, the bench measures them
HEAVY = {"dac": "codecsep_core.dac_codec", "laion_clap": "codecsep_core.prompt_encoder"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def package_of(path: Path) -> str:
    return module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]


def imports(path: Path, known: set[str], package: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of the file,
    outside its entry-point guard. `from a import b` names `a.b` when that is a module;
    relative imports are read from `package`."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool]]]:
    known = set(modules())
    return {name: imports(path, known, package_of(path)) for name, path in modules().items()}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offending(graph, importer, imported) -> list[str]:
    return sorted(
        f"{src} imports {dst}"
        for src, edges in graph.items()
        if importer(src)
        for dst, _ in edges
        if imported(src, dst)
    )


def test_the_core_and_storage_stand_alone(graph):
    assert not offending(
        graph,
        lambda src: within(src, "codecsep_core"),
        lambda _, dst: any(within(dst, p) for p in ("storage", "jobs", "ray")),
    )
    assert not offending(
        graph,
        lambda src: within(src, "storage"),
        lambda _, dst: any(within(dst, p) for p in ("codecsep_core", "jobs", "ray", "torch")),
    )


def test_the_engine_imports_no_job_no_resolver_and_not_the_core(graph):
    assert not offending(
        graph,
        lambda src: within(src, "jobs.engine"),
        lambda _, dst: within(dst, "codecsep_core") or (within(dst, "jobs") and not within(dst, "jobs.engine")),
    )


def test_jobs_import_the_engine_by_its_face_only(graph):
    assert not offending(
        graph,
        lambda src: within(src, "jobs") and not within(src, "jobs.engine"),
        lambda _, dst: within(dst, "jobs.engine") and dst != "jobs.engine",
    )


def test_no_job_imports_another(graph):
    def job_of(name: str) -> str | None:
        return next((j for j in JOBS if within(name, j)), None)

    assert not offending(
        graph,
        lambda src: job_of(src) is not None and job_of(src) not in RUNS_OTHER_JOBS,
        lambda src, dst: job_of(dst) not in (None, job_of(src)),
    )
    assert not offending(graph, lambda src: not is_program(src), lambda _, dst: dst == "jobs.cli")


def is_program(name: str) -> bool:
    """The CLI, and `python -m` entry points (`__main__` modules): the top of the program."""
    return name == "jobs.cli" or name.endswith(".__main__")


def test_heavy_model_packages_are_imported_lazily_by_their_one_wrapper(graph):
    for package, wrapper in HEAVY.items():
        users = {src for src, edges in graph.items() for dst, _ in edges if within(dst, package)}
        assert users <= {wrapper}, f"{package} imported outside {wrapper}: {sorted(users - {wrapper})}"
        assert not [dst for dst, top in graph[wrapper] if within(dst, package) and top], f"{wrapper}: not lazy"


def test_no_import_circle_anywhere(graph):
    edges = {src: sorted({dst for dst, _ in targets if dst in graph and dst != src}) for src, targets in graph.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import os\n\ndef f():\n    from jobs.engine import runner\n")
    found = imports(path, {"jobs.engine.runner"}, "")
    assert ("os", True) in found and ("jobs.engine.runner", False) in found
