"""pyproject.toml lists packages explicitly (top-level folders install under other names): keep it complete."""

import tomllib

from tests.conftest import REPO

MAPPED = {"medseg": "medseg", "medseg_kernels": "kernels", "medseg_datasets": "datasets", "medseg_plans": "plans"}


def test_every_package_folder_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"] == {k: v for k, v in MAPPED.items() if k != "medseg"}
    found = set()
    for name, folder in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *relative)))
    assert found == listed, f"add to pyproject packages: {sorted(found - listed)}; remove: {sorted(listed - found)}"
