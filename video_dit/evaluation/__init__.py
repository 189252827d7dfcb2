"""Evaluation: what generated videos show, against the real clips of the same examples."""

# The evaluation networks (the probes, I3D) train for hundreds of steps or run on large
# inputs: they are compiled at full optimisation even where XLA_FLAGS lowers the level
# for everything else (the tests compile at level 0, where the identity probe's step ran
# 1.7x slower). Other XLA_FLAGS, such as the tests' choice of fusion emitters, still
# apply to them.
FULL_OPTIMISATION = {"xla_backend_optimization_level": 3}
