"""Dependencies are used through their public APIs: no private attributes of other modules, and
supervisord's states and faults compared by supervisor's own constants, never by copied names.

Covers the packages listed in PACKAGES (a part joins the list once it is clean).
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("otau", "gwe")
# supervisor's process and supervisord state names and the XML-RPC fault names otau/gwe meet
SUPERVISOR_NAMES = {"RUNNING", "STOPPED", "STARTING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN",
                    "RESTARTING", "SHUTDOWN", "BAD_NAME", "ALREADY_ADDED", "STILL_RUNNING", "ALREADY_STARTED",
                    "NOT_RUNNING", "SPAWN_ERROR", "CANT_REREAD"}


def sources():
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(directory, name), ROOT)


def _constants(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _constants(element)


def findings(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):  # super()._x is a base's
                found.append("%s:%d: private attribute %s" % (path, node.lineno, node.attr))
        if isinstance(node, ast.Compare):
            for side in [node.left] + node.comparators:
                for const in _constants(side):
                    if const.value in SUPERVISOR_NAMES:
                        found.append("%s:%d: compares with the copied name %r" % (path, node.lineno, const.value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__"):
            found.append("%s:%d: private attribute %s" % (path, node.lineno, node.args[1].value))
    return found


@pytest.mark.parametrize("path", sorted(sources()))
def test_no_private_api_of_a_dependency(path):
    assert findings(path) == []
