"""Does the protection work? Everything that judges a protected image rather than making one:
the loss figures with their intervals (measure), what survives a mimic's preprocessing and
cleanups (robustness), and the statistics both rest on (stats)."""
