"""The paper's mechanism studies (docs/method.md section 6), reproducible on any causal LM.

* :mod:`.couplings` -- Table 2: entropy at WAAD peaks, receiver-head vs global-head FAI
  peaks, FAI peaks at or right after WAAD peaks; observed vs random, lift, bootstrap
  interval over problems and a permutation p-value (:mod:`.statistics`).
* :mod:`.perturb` -- Table 1: force the top-k alternative tokens at a high-FAI and a low-FAI
  position, greedy-decode a horizon, compare content words with the reference continuation.
* :mod:`.problems` -- the problem sources (built-in word problems, a JSONL file, a cached
  Hugging Face dataset); :mod:`.outputs` -- JSON, markdown and plot files.
"""
