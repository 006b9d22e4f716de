"""Batch uniformity: the GAN post's symptom of a BN discriminator scoring a batch, not its images.

The GAN post saw a VGG discriminator with BatchNorm give "a near-uniform value across the batch
dimension" when real and fake images came in separate batches. Measured here with the law of
total variance. For K batches of B scores each, s[k, i]:

    total   = mean over k, i of (s[k, i] - mean(s))^2
    between = mean over k of (mean_i s[k, i] - mean(s))^2        (variance of the batch means)
    within  = mean over k of mean_i (s[k, i] - mean_i s[k, i])^2  (mean variance inside a batch)
    total   = between + within                                     (all population variances)

    uniformity = between / total  in [0, 1]

1 means every image of a batch gets the same score (the score is a property of the batch); a
score that depends on its image only gives between ~ total / B, so uniformity ~ 1 / B (0.016 at
B = 64) rather than exactly 0. Undefined (NaN) when every score is the same. Compare runs at the
same batch size.
"""

import math

import torch


def variance_split(scores: torch.Tensor) -> tuple[float, float]:
    """(between, within) population variances of (K, B) scores; between + within = total."""
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (batches, batch size), got {tuple(scores.shape)}")
    s = scores.double()
    means = s.mean(1)
    between = (means - s.mean()).square().mean()
    within = (s - means[:, None]).square().mean()
    return between.item(), within.item()


def batch_uniformity(*groups: torch.Tensor) -> float:
    """Share of the score variance that lies between batches, pooled over `groups`.

    Each group is a (K, B) tensor of scores of one kind of batch (all real, or all fake); its
    variances are taken around its own mean, so real scoring higher than fake on average is not
    counted as uniformity. Pooled: sum of the groups' between-batch variances over the sum of
    their total variances. NaN when every group's scores are all equal.
    """
    between = within = 0.0
    for g in groups:
        b, w = variance_split(g)
        between, within = between + b, within + w
    total = between + within
    return between / total if total > 0 else math.nan
