"""The layer rule of the library, read off the import statements of every module (lazy ones inside functions too).

    configuration_panovlm            imports nothing of PanoVLM
    processing_panovlm (flat)        configuration_panovlm
    processing_panovlm.{data,visualization}
                                     configuration_panovlm, processing_panovlm
    modeling_panovlm (flat: the model)
                                     configuration_panovlm
    modeling_panovlm.<tooling>       the model, the processing layer, and the tooling listed below it

`modeling_panovlm/__init__.py` alone imports `processing_panovlm`, so that `import modeling_panovlm` registers every
Auto class.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configuration_panovlm", "processing_panovlm", "modeling_panovlm")
# Tooling sub-packages of modeling_panovlm and the other tooling each may import.
TOOLING = {
    "hub": set(),
    "evaluation": set(),
    "training": {"hub", "evaluation"},
    "conversion": {"training"},
    "testing": set(),
    # The panorama probe: trains (training) and scores (evaluation) tiny models (testing) on synthetic tasks.
    "probe": {"evaluation", "training", "testing"},
    # The command-line tools sit on top of everything else.
    "cli": {"hub", "evaluation", "training", "conversion", "testing", "probe"},
}
MAX_MODULE_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the PanoVLM modules `path` imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def _layer(module: str) -> tuple[str, str | None]:
    """(package, tooling sub-package or None for the flat core)."""
    parts = module.split(".")
    sub = parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[0] / parts[1]).is_dir()) else None
    return parts[0], sub


def _allowed(importer: str, imported: str) -> bool:
    package, sub = _layer(importer)
    target_package, target_sub = _layer(imported)
    if target_package == "configuration_panovlm":
        return True
    if package == "configuration_panovlm":
        return False
    if package == "processing_panovlm":
        return target_package == "processing_panovlm" and (sub is not None or target_sub is None)
    # modeling_panovlm
    if importer == "modeling_panovlm":
        return True
    if sub is None:  # the model itself
        return target_package == "modeling_panovlm" and target_sub is None
    if target_package == "processing_panovlm":
        return True
    return target_sub is None or target_sub == sub or target_sub in TOOLING[sub]


LIBRARY_FILES = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_layer_rule(path):
    importer = _module_name(path)
    wrong = sorted(name for name in _imports(path) if not _allowed(importer, name))
    assert not wrong, f"{importer} imports {wrong}, above its layer (see this test's docstring)"


def test_tooling_sub_packages_are_the_documented_ones():
    found = {path.name for path in (ROOT / "modeling_panovlm").iterdir() if (path / "__init__.py").is_file()}
    assert found == set(TOOLING)


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_modules_are_readable_in_one_sitting(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by concept"


@pytest.mark.parametrize(
    "package, must_not_load",
    [
        ("configuration_panovlm", ("processing_panovlm", "modeling_panovlm")),
        ("processing_panovlm", ("modeling_panovlm",)),
    ],
)
def test_importing_a_layer_loads_nothing_above_it(package, must_not_load):
    code = f"import sys, {package}; print(sorted(m for m in sys.modules if m.split('.')[0] in {must_not_load!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_rule_itself_refuses_upward_imports():
    assert not _allowed("configuration_panovlm.view_layout", "processing_panovlm.equirect")
    assert not _allowed("processing_panovlm.processing_panovlm", "modeling_panovlm.hub")
    assert not _allowed("processing_panovlm.image_loading", "processing_panovlm.data.captions")
    assert not _allowed("modeling_panovlm.modeling_panovlm", "modeling_panovlm.training.lora")
    assert not _allowed("modeling_panovlm.modeling_panovlm", "processing_panovlm.image_loading")
    assert not _allowed("modeling_panovlm.hub.cards", "modeling_panovlm.training.stages")
    assert _allowed("modeling_panovlm.training.runner", "processing_panovlm.data.collator")
    assert _allowed("modeling_panovlm.conversion.panollava", "modeling_panovlm.training.lora")
