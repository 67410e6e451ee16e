"""Engine-neutral credit over a batch of RL rollouts: what the TRL trainer and the verl plugin both call.
``credit`` turns a padded rollout batch into gamma, the shaped advantages and the ``rhythm/*`` metrics."""
