"""Every ```python block of README.md runs as written, in order, in one namespace.

A block that prints must show its output in README.md verbatim (the
describe table). A block preceded by the line ``<!-- readme-test: skip
(reason) -->`` is not run (for one that needs a GPU or a long time); none is
marked now.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SKIP = re.compile(r"<!-- readme-test: skip \(.+\) -->\n$")


def _python_blocks() -> list[str]:
  blocks = []
  for m in re.finditer(r"^```python\n(.*?)^```$", README, re.M | re.S):
    if not SKIP.search(README[:m.start()]):
      blocks.append(m.group(1))
  return blocks


def test_readme_python_blocks_run_and_print_what_readme_shows():
  blocks = _python_blocks()
  assert len(blocks) >= 4, "README's python blocks not found"
  namespace: dict = {"__name__": "readme"}
  for i, block in enumerate(blocks):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # pylint: disable=exec-used
    if out.getvalue():
      assert out.getvalue() in README, (
          f"block {i} printed what README.md does not show:\n{out.getvalue()}")
