"""The tuner: which resolution, patch size, precision and backend to deploy.

One concept per module, in the order data flows through them:

- :mod:`~vitres.tune.records`: the plain result records (JSON lines) and :class:`GroupKey`;
- :mod:`~vitres.tune.grid`: the resolution grammar and the config grid;
- :mod:`~vitres.tune.measurement`: measuring one config into a record;
- :mod:`~vitres.tune.sweep`: the resumable sweep; :mod:`~vitres.tune.adaptive`, its
  adaptive mode;
- :mod:`~vitres.tune.costmodel`: latency and memory as functions of the token count;
- :mod:`~vitres.tune.budget`, :mod:`~vitres.tune.rule`: the budget and the acceptance rule;
- :mod:`~vitres.tune.recommend`: the one decision;
- :mod:`~vitres.tune.export_plan`: a record mapped to the plan that exports exactly what it
  measured (carried out by :mod:`vitres.export.plan`).

The report of a decision (HTML/Markdown, plots) and the main job end to end
(``vitres demo``) sit one room above, in :mod:`vitres.report`.
"""

from vitres.tune.budget import Budget
from vitres.tune.recommend import Recommendation, format_recommendation, recommend
from vitres.tune.records import GroupKey, Measurement, SweepConfig, group_key, read_results
from vitres.tune.rule import Judgement, judge

__all__ = [
    "Budget",
    "GroupKey",
    "Judgement",
    "Measurement",
    "Recommendation",
    "SweepConfig",
    "format_recommendation",
    "group_key",
    "judge",
    "read_results",
    "recommend",
]
