"""The examples: committed outputs match what they print now; quick runs."""

from __future__ import annotations

import pathlib

import numpy as np

from examples import mor_table

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_mor_table_matches_committed_output():
  committed = (ROOT / "docs" / "mor_table.md").read_text()
  assert mor_table.markdown(mor_table.table()) in committed


def test_converted_transformer_trains_and_reports_statistics():
  """The plain Flax transformer, handed our dot_general, trains and reports."""
  from examples import convert_transformer  # pylint: disable=import-outside-toplevel
  result = convert_transformer.train(steps=3, batch_size=4, seq_len=8,
                                     layers=1, d_model=16, heads=2, d_ff=32)
  assert np.isfinite(result.mor_losses).all()
  # FP8 where MoR allows it, and the loss stays with the unquantized model's.
  np.testing.assert_allclose(result.mor_losses, result.ref_losses, rtol=0.02)
  # Six quantizations of each of the four quantized layers; lm_head is not.
  layers = {k.split("/")[1] for k in result.metrics}
  assert layers == {"qkv", "attn_out", "fc1", "fc2"}
  for layer in layers:
    for role in convert_transformer.ROLES:
      pre = f"Block_0/{layer}/MoRDotGeneral_0/{role}/"
      assert result.metrics[pre + "fraction_e4m3"] in (0.0, 1.0)
      assert 0 < result.metrics[pre + "amax"]
  assert np.mean([v for k, v in result.metrics.items()
                  if k.endswith("fraction_e4m3")]) > 0.5
  table = convert_transformer.report(result.metrics)
  assert "Block_0/qkv " in table and "lm_head" not in table

