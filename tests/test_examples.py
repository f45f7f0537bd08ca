"""The committed outputs of the example scripts match what they print now."""

from __future__ import annotations

import pathlib

from examples import mor_table

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_mor_table_matches_committed_output():
  committed = (ROOT / "docs" / "mor_table.md").read_text()
  assert mor_table.markdown(mor_table.table()) in committed
