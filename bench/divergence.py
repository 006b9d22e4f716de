"""When a run counts as diverged: plain rules over an epoch's training losses, no config.

`bench.run` builds one `DivergenceRule` per run from `diverge.factor` and `diverge.max_loss`
(checked by `runners.validate`) and ends the run as 'diverged' when it names a reason.
"""

import math

# diverge.factor=auto, per task. Classify and autoencode losses fall after epoch 1 (its mean
# includes the untrained first steps), so a 100x rise is far outside noise. The GAN's losses
# swing by orders of magnitude as D and G trade places. Measured here over
# gan_discriminator_norm_cpu's 20 epochs (digits, bs 64, 22 steps an epoch): BN in D, g_loss
# 2.29 -> 8.77 (3.8x its epoch-1 value); GN in D, d_loss 0.34 -> 0.00088 (epoch 8) -> 0.82
# (epoch 12), 930x its low point but 2.4x its epoch-1 value. With hundreds of steps an epoch D
# can win within epoch 1, so its mean d_loss may start far lower than here: 1000 keeps a wide
# margin.
AUTO_FACTOR = {"classify": 100, "autoencode": 100, "gan": 1000}
# diverge.max_loss's default, 1e4, is over 1000x where every task's training loss starts: an
# untrained classifier's cross-entropy is about ln(classes) (ln 10 = 2.3), the autoencoder's
# per-pixel MSE on [-1, 1] pixels is at most 1 for a blank output, the GAN's d_loss 2 ln 2 = 1.39
# and g_loss ln 2 = 0.69 (softplus of logits near 0).


def train_losses(metrics: dict) -> dict[str, float]:
    """The training objectives in an epoch's metrics: classify and autoencode `loss`, the GAN's
    `d_loss` and `g_loss` (split train, name ending in "loss")."""
    return {n: v for (s, n), v in metrics.items() if s == "train" and n.endswith("loss")}


class DivergenceRule:
    """A run diverges when a training loss is not finite, exceeds `max_loss`, or exceeds `factor`
    times the first value it had in this run. The factor rule alone misses a run that blew up in
    its first epoch (lr=1e12 with SGD: train loss 1.1e23 at epoch 1, then 1.2e12); max_loss
    catches it. Test losses are not watched: a test-time loss can be inf (BN with batch
    statistics at test time) without the training having diverged."""

    def __init__(self, task: str, factor, max_loss):
        self.factor = (AUTO_FACTOR.get(task, 100) if factor == "auto" else factor) or None
        self.max_loss = max_loss or None
        self.first: dict[str, tuple[int, float]] = {}

    def __call__(self, epoch: int, metrics: dict) -> str | None:
        """None, or why the run diverged at `epoch` (the text of its `error` column)."""
        for name, v in train_losses(metrics).items():
            if not math.isfinite(v):
                return f"train {name} became {v} at epoch {epoch} (rule: not finite)"
            if self.max_loss is not None and v > self.max_loss:
                return (f"train {name} {v:.4g} at epoch {epoch} is above diverge.max_loss="
                        f"{self.max_loss:g} (rule: max_loss)")
            first_epoch, first = self.first.setdefault(name, (epoch, v))
            # first > 0: a loss that starts at exactly 0 has no scale to grow against.
            if self.factor is not None and first > 0 and v > self.factor * first:
                return (f"train {name} {v:.4g} at epoch {epoch} is more than diverge.factor="
                        f"{self.factor:g} times its epoch-{first_epoch} value {first:.4g} "
                        f"(rule: factor)")
        return None
