"""The names of the attention routes (pure Python: settings and the command line read them without torch).

``auto`` picks the fused kernel where it applies, else the fp32 tile loop; ``fused`` and ``tile``
force one (see :mod:`attnrhythm.attention.capture`).
"""

ROUTES: tuple[str, ...] = ("auto", "fused", "tile")
