"""The mapped layout: `selfcorrect.<component>` lives in the top-level folder `<component>/`."""

import ast
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("world", "vision", "diffusion", "critics", "train")


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_is_loaded_from_its_top_level_folder(name):
    module = __import__(f"selfcorrect.{name}", fromlist=["_"])
    assert Path(module.__file__).resolve() == ROOT / name / "__init__.py"


def test_package_list_matches_the_folders_on_disk():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    # Every package folder with an __init__.py must be listed (auto-discovery cannot see them).
    on_disk = {"selfcorrect"} | {f"selfcorrect.{c}" for c in COMPONENTS}
    for folder in COMPONENTS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join(["selfcorrect", folder, *rel.parts]))
    assert set(config["packages"]) == on_disk
    for name in COMPONENTS:
        assert mapping[f"selfcorrect.{name}"] == name


def _bare_component_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in COMPONENTS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in COMPONENTS:
                bad.append(node.module)
    return bad


def test_no_code_imports_a_component_by_its_bare_folder_name():
    offenders = {}
    for folder in ("selfcorrect", *COMPONENTS, "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if bad := _bare_component_imports(path):
                offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_bare_import_detector_catches_one(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import world\nfrom critics.base import Critic\nimport selfcorrect.world\n")
    assert _bare_component_imports(f) == ["world", "critics.base"]


def test_oracle_is_not_imported_by_critics_diffusion_or_vision():
    # DESIGN.md: the oracle is the exam; only world/, train/ data builders, tests and benchmarks use it.
    for folder in ("critics", "diffusion", "vision"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "oracle" not in path.read_text(), f"{path} mentions the oracle"


def test_built_wheel_maps_the_folders(tmp_path):
    # An editable install hides mapping mistakes; build the real wheel and look inside.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("selfcorrect-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in COMPONENTS:
        assert f"selfcorrect/{name}/__init__.py" in names
    assert "selfcorrect/world/scene.py" in names
    assert not any(n.startswith(f"{c}/") for n in names for c in COMPONENTS)


def test_help_is_fast():
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "selfcorrect.cli", "--help"], capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - start
    assert "world" in out.stdout
    assert elapsed < 1.0, f"selfcorrect --help took {elapsed:.2f} s"
    # --help must not import the heavy libraries.
    probe = "import sys, selfcorrect.cli; print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL') if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
