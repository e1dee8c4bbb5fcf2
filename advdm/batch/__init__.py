"""Many images, safely re-run: what is left to do (worklist), what a re-run redoes (resume:
the hashes and the plan), the record of what was done (manifest), and the torchrun ranks
that share the work (ranks)."""
