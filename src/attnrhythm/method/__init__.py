"""The method in code: pure functions of tensors, no model and no trainer. ``rhythm`` (layers, head
classes, WAAD, FAI, Delta, roles), ``credit`` (gamma per strategy and the GRPO shaping rule), ``peaks``
(the one definition of a metric's peaks). docs/method.md states every formula and default."""
