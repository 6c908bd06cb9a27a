"""ebmkit-likelihood: the likelihood an EBM's maximum-likelihood learning maximises, estimated.

* ``ais`` (evaluator): annealed importance sampling from the chain-start prior p₀ to exp(−U)
  — log Ẑ with its standard error and the weights' effective sample size, the held-out
  log-likelihood in nats and bits/dim — and reverse AIS from held-out data (the other bound of
  the sandwich). :mod:`ebmkit_likelihood.ais`.
* ``parallel-tempering`` (sampler): replica exchange over a ladder of inverse temperatures
  with any registered base transition. :mod:`ebmkit_likelihood.tempering`.
* ``nuts`` (sampler): the multinomial no-U-turn sampler with dual-averaging step size.
  :mod:`ebmkit_likelihood.nuts`.

This module is the plugin (``[project.entry-points.ebmkit] likelihood = "ebmkit_likelihood"``);
it imports nothing heavy at import time.
"""

from __future__ import annotations

from ebmkit import hookimpl


@hookimpl
def ebmkit_register(register):
    from .ais import AIS
    from .nuts import NUTS
    from .tempering import ParallelTempering

    register(AIS)
    register(NUTS)
    register(ParallelTempering)
