"""Plug-ins outside the medseg package: a lab's own model family, task, kernel backend or dataset
recipe is a module that registers itself on import, found without editing medseg by either

- an installed package's entry point in the group ``medseg.plugins``
  (pyproject: ``[project.entry-points."medseg.plugins"] mylab = "mylab.medseg_plugin"``), or
- the environment variable ``MEDSEG_PLUGINS``: comma-separated module names (the CLI's
  ``--plugin MODULE`` adds to it, so torchrun workers and other child processes inherit it).

Every registry loads the plug-ins before its first lookup, so they work in every command."""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from medseg.errors import MedsegError

ENTRY_POINT_GROUP = "medseg.plugins"
ENVIRONMENT_VARIABLE = "MEDSEG_PLUGINS"

_loaded: set[str] = set()
_entry_points_seen = False


def plugin_modules() -> list[str]:
    """Module names asked for in the environment, in order, without repeats."""
    names = [name.strip() for name in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",")]
    return list(dict.fromkeys(name for name in names if name))


def add_plugin_modules(names: list[str]) -> None:
    """Ask for more plug-in modules, here and in every child process started afterwards."""
    os.environ[ENVIRONMENT_VARIABLE] = ",".join(dict.fromkeys(plugin_modules() + list(names)))


def load_plugins() -> None:
    """Import every plug-in not imported yet (cheap after the first call: the installed
    packages' entry points are read once per process)."""
    global _entry_points_seen
    points = [] if _entry_points_seen else entry_points(group=ENTRY_POINT_GROUP)
    _entry_points_seen = True
    for point in points:
        key = f"entry point {point.name} = {point.value}"
        if key not in _loaded:
            _loaded.add(key)  # marked first: a plug-in that looks up a registry must not recurse
            try:
                point.load()
            except Exception as error:
                raise MedsegError(f"medseg plug-in {key} (group {ENTRY_POINT_GROUP}) failed to load: {type(error).__name__}: {error}") from error
    for name in plugin_modules():
        if name not in _loaded:
            _loaded.add(name)
            try:
                importlib.import_module(name)
            except Exception as error:
                raise MedsegError(f"medseg plug-in module '{name}' (from ${ENVIRONMENT_VARIABLE}) failed to import: {type(error).__name__}: {error}") from error
