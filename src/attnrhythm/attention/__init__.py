"""The attention engine: the attention function registered with transformers (``capture``), the routes
that reduce each analysed layer to per-head vectors (``fused`` kernel, ``bands`` near the diagonal,
the fp32 tile loop in ``reductions``), the reduction contract they all fill (``reductions``), and full
parameters for the analysis forward on sharded models (``sharding``). Nothing here knows about roles,
credit or trainers."""
