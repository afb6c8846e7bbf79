"""What the paper measures after training (docs/protocol.md §6): ablation, head analysis, run statistics.

* :mod:`fertool.analysis.ablation` — ``ablate()``: switch LHC modules off or reset them to
  their untrained initial weights, without retraining, and measure test accuracy; runs the
  head analysis and draws the attention pictures on the same images.
* :mod:`fertool.analysis.heads` — correlation between the outputs of the heads of each LHC
  module (accumulated batch by batch), LHC-NetC controller weights.
* :mod:`fertool.analysis.report` — ``report()``: Table 7 of the paper from any number of
  evaluated runs.
* :mod:`fertool.analysis.plots` — the pictures (matplotlib, Agg backend).

This package module stays light (no torch import) so that ``fertool report`` starts fast.
"""

from __future__ import annotations
