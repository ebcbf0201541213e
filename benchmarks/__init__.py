"""Speed ratios and the papers' claims in miniature; not part of `make test`."""
