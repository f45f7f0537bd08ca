"""Packaging checks: BUILD covers every module, CI runs the README's command."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PY_DIRS = ("mor_jax", "kernels", "tests", "examples", "benchmarks")


def _build_targets(kind: str | None = None) -> dict[str, list[str]]:
  """Evaluates BUILD (Starlark is Python syntax here) with recording rules."""
  targets: dict[str, list[str]] = {}

  def recorder(rule_kind):
    def rule(name, srcs=(), **kwargs):
      del kwargs
      assert name not in targets, f"duplicate target {name}"
      if kind in (None, rule_kind):
        targets[name] = list(srcs)
    return rule

  env = dict(py_library=recorder("py_library"), py_test=recorder("py_test"),
             py_binary=recorder("py_binary"), package=lambda **kw: None)
  exec(compile((ROOT / "BUILD").read_text(), "BUILD", "exec"), env)  # pylint: disable=exec-used
  return targets


def test_every_python_file_belongs_to_one_target():
  targets = _build_targets()
  listed = [src for srcs in targets.values() for src in srcs]
  assert len(listed) == len(set(listed)), "a file is in two targets"
  on_disk = {
      str(p.relative_to(ROOT)) for d in PY_DIRS if (ROOT / d).is_dir()
      for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts
  } | {p.name for p in ROOT.glob("*.py")}
  assert on_disk - set(listed) == set(), "files missing from BUILD"
  assert set(listed) - on_disk == set(), "BUILD names files that do not exist"


def test_every_test_file_has_a_py_test():
  tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
  assert tests == {s for srcs in _build_targets("py_test").values() for s in srcs}


def test_test_files_import_no_test_file():
  """Shared cases live in helper modules (tests/cases.py, tests/data.py)."""
  for path in (ROOT / "tests").glob("test_*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      for name in names:
        assert not re.search(r"(^|\.)test_\w+", name), (path.name, name)


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  commands = re.findall(r"^\s*(make \w+)\s*$", readme[:3000], re.M)
  assert commands[:2] == ["make demo", "make test"], commands
  ci = (ROOT / ".ci" / "run").read_text()
  assert "make test" in ci.splitlines()[-1]
