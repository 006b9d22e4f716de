"""Measurements beyond a loss, as plain functions and modules (no config, no database).

- `uniformity`: how much of a discriminator's score variance lies between batches (the GAN post).
- `classifier_scores`: classifier-feature FID / KID / inception score (`cfid`, `ckid`, `cis`)
  in the feature space of a classifier the suite trains itself. NOT Inception scores: the numbers
  are only comparable between runs that use the same classifier (same dataset and same config).
- `feature_classifier`: that classifier, trained once per dataset and config, cached on disk.
"""
