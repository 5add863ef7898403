"""The development harness (`nofx_dev`) stays apart from the operator (`nofx`): the operator
never imports it, it is not inside the operator's package, and the image does not copy it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "operator" / "nofx"
HARNESS = ROOT / "operator" / "nofx_dev"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_operator_never_imports_the_harness() -> None:
    sources = sorted(RUNTIME.rglob("*.py"))
    assert sources
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            module
            for module in imported_modules(path)
            if module == "nofx_dev" or module.startswith("nofx_dev.")
        )
        for path in sources
    }
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_the_harness_is_a_sibling_of_the_operator_package() -> None:
    assert (HARNESS / "__init__.py").is_file()
    assert not list(RUNTIME.rglob("nofx_dev"))
    # Its old place: a checkout that ran the tests before the move may keep a __pycache__ there.
    assert not list((RUNTIME / "localcluster").glob("*.py"))


def test_the_image_copies_only_the_operator_package() -> None:
    copies = [
        line.split()[1:]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    ]
    sources = [source for args in copies for source in args[:-1]]
    assert "operator/nofx" in sources
    assert not [source for source in sources if source in ("operator", ".", "operator/")]
    assert not [source for source in sources if "nofx_dev" in source]
