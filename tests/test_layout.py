"""The house rules, checked on the source: no import cycles between modules, ``data/`` imports nothing from
``models/``, the library never imports the CLI, and no module imports another module's private names."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """Module name -> {(imported module, imported name)} for every import of dgm_pyro, inside functions too (an
    import deferred into a function is still a dependency: a cycle through it is a cycle)."""
    out = {}
    for f in (ROOT / "dgm_pyro").rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module
                deps.update((base, a.name) for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update((a.name, "") for a in node.names)
        out[name] = deps
    return out


def _module(modules: set[str], base: str, name: str) -> str:
    for candidate in (f"{base}.{name}", base):
        while candidate and candidate not in modules:
            candidate = candidate.rpartition(".")[0]
        if candidate:
            return candidate
    return ""


def test_no_import_cycles_and_data_does_not_import_models():
    imports = _imports()
    graph = {m: {_module(set(imports), b, n) for b, n in deps if b.startswith("dgm_pyro")} - {m, ""}
             for m, deps in imports.items()}
    seen, cycles = set(), []

    def visit(node, path):
        for dep in graph[node]:
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in seen:
                visit(dep, path + [dep])
        seen.add(node)

    for m in graph:
        visit(m, [m])
    assert not cycles, cycles[:3]
    assert not [m for m in graph if m.startswith("dgm_pyro.data") and any(d.startswith("dgm_pyro.models")
                                                                         for d in graph[m])]


def test_library_never_imports_the_cli_nor_private_names():
    for f in (ROOT / "dgm_pyro").rglob("*.py"):
        text = f.read_text()
        assert "from cli" not in text and "import cli" not in text, f
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "dgm_pyro"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, (f, private)


def test_result_files_live_in_one_folder():
    """Benchmark results (JSON) are in docs/results/, not beside the pages; every one is named by a page or a
    benchmark, and every docs/results/ file a page names exists."""
    import re

    docs = ROOT / "docs"
    assert not list(docs.glob("*.json"))
    text = "".join(p.read_text() for p in [*docs.glob("*.md"), *(ROOT / "benchmarks").glob("*.py")])
    named = set(re.findall(r"docs/results/([\w.-]+\.json)|\(results/([\w.-]+\.json)\)", text))
    named = {a or b for a, b in named}
    held = {p.name for p in (docs / "results").glob("*.json")}
    assert held <= named, held - named
    assert named <= held, named - held


def test_the_known_mutations_still_apply():
    """benchmarks/mutation_testing.py's hand-made mutations of issue 27 each find their text exactly once in the file
    they mutate, so `python benchmarks/mutation_testing.py known` does not rot when the code moves."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutation_testing", ROOT / "benchmarks" / "mutation_testing.py")
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    assert len(mt.KNOWN) == 8
    for name, path, old, new, tests in mt.KNOWN:
        assert (ROOT / path).read_text().count(old) == 1, name
        assert old != new and all((ROOT / t).exists() for t in tests), name
