"""The byte-level language model of ``examples/train_lm.py``, by concept.

Laid out like flax's ``examples/lm1b`` so that each part reads on its own:

- ``config``: the settings (``Config``), ``PRESETS`` and the MoR ``RECIPES``;
- ``data``: the standard-library corpus, training batches, validation windows;
- ``model``: the decoder-only ``Transformer`` with ``MoRDense`` layers;
- ``sharding``: the (data, fsdp, tensor) mesh and the parameters' specs;
- ``metrics``: the per-recipe JSON-lines files, written and read (``Run``);
- ``train``: optimizer, train and eval steps, checkpoints, the training loop;
- ``report``: the summary table and the plots;
- ``study``: the paired multi-seed study (``examples/study.py``): runs
  seeds x recipes, and its table of loss ratios to BF16 with error bars.

Importing any of them leaves matplotlib alone (not imported, backend
unchanged); ``report`` draws on ``matplotlib.figure.Figure`` only when asked.
``examples/train_lm.py`` and ``examples/study.py`` are the command lines.
"""
