"""The supported Pythons are stated once per place that needs them, and the places agree: the
Makefile's SUPPORTED_PYTHONS (which interpreters it looks for), pyproject's requires-python and
classifiers (what pip accepts), README (what users read). The Makefile's smoke set names tests
that exist, so a rename fails here in the whole suite, not only on the other interpreter."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest
from packaging.specifiers import SpecifierSet

from conftest import REPO

MAKEFILE = (REPO / "Makefile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _make_variable(name: str) -> list[str]:
    """The words of a ``NAME := ...`` assignment, continuation lines included."""
    match = re.search(rf"^{name} :=((?:.*\\\n)*.*)$", MAKEFILE, re.M)
    assert match, f"Makefile has no `{name} :=` line"
    return match.group(1).replace("\\\n", " ").split()


SUPPORTED = _make_variable("SUPPORTED_PYTHONS")


def test_makefile_looks_for_the_versions_requires_python_admits_newest_first():
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert SUPPORTED == sorted(SUPPORTED, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    major, minors = 3, sorted(int(v.split(".")[1]) for v in SUPPORTED)
    assert minors == list(range(minors[0], minors[-1] + 1)), SUPPORTED
    for minor in minors:
        assert spec.contains(f"{major}.{minor}.0") and spec.contains(f"{major}.{minor}.99"), (minor, spec)
    for outside in (minors[0] - 1, minors[-1] + 1):
        assert not spec.contains(f"{major}.{outside}.0"), (outside, spec)


def test_classifiers_and_readme_name_the_supported_versions():
    classifiers = {c.rsplit(" :: ", 1)[1] for c in PYPROJECT["project"]["classifiers"]
                   if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert classifiers == set(SUPPORTED)
    readme = (REPO / "README.md").read_text()
    needs = re.search(r"^Needs Python ([^,]+),", readme, re.M)
    assert needs, "README lost its `Needs Python ...` line"
    assert set(re.findall(r"3\.\d+", needs.group(1))) == set(SUPPORTED), needs.group(0)


def test_this_interpreter_is_a_supported_one():
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in SUPPORTED


@pytest.mark.parametrize("node", _make_variable("SMOKE_TESTS"))
def test_smoke_tests_named_in_the_makefile_exist(node):
    path, _, name = node.partition("::")
    source = (REPO / path).read_text()
    assert not name or re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{path} has no test {name}"
