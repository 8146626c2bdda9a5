"""Feedback-loop simulation: what a recommender does to users and the catalogue over many rounds
when its own recommendations become its next training data.

- :mod:`.oracle`: the ground truth, a calibrated P(like) for every (user, item), fitted on the real
  data and never shown to a recommender;
- :mod:`.choice`: simulated users (position bias, clicks, conversions, fatigue, leaving);
- :mod:`.interventions`: exploration, MMR diversity, popularity calibration;
- :mod:`.loop`: the rounds, update strategies, checkpoints, parallel runs;
- :mod:`.metrics` and :mod:`.report`: per-round metrics, plots and the markdown summary.

Entry points: :func:`simulate` (what ``promptrec simulate`` runs) and :class:`SimulationConfig`.
"""

from .config import SimulationConfig
from .loop import build_world, run_one, simulate
from .oracle import Oracle, fit_oracle

__all__ = ["Oracle", "SimulationConfig", "build_world", "fit_oracle", "run_one", "simulate"]
