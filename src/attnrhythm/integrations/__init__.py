"""Adapters that plug attnrhythm's credit into RL engines through their own extension points.

* :mod:`attnrhythm.integrations.verl`: a verl (>= 0.9.1, < 0.10) trainer mode and actor worker
  (``pip install 'attnrhythm[verl]'``, in a virtualenv of its own: verl pins transformers < 5.11).

The TRL trainer lives in :mod:`attnrhythm.train`.
"""
