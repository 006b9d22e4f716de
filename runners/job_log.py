"""What a job logs: one line naming it (its label, the database's run id, its settings, device
and threads) and one short line per epoch; the full metrics are at DEBUG level and in the
database (`runners.job.run_job` writes them)."""

from omegaconf import DictConfig

from bench.divergence import train_losses


def describe(cfg: DictConfig, device, threads: int, overrides: str = "") -> str:
    """The settings a reader needs to tell jobs apart, the device and the thread count (CPU
    results are reproducible only at the same thread count: runs.threads); `overrides`: the
    job's other command-line overrides, as typed."""
    ds = cfg.dataset
    text = (f"{cfg.task.name} {ds.name}/{cfg.model.name} norm={cfg.norm.name} bs={cfg.bs} "
            f"lr={cfg.lr:g} seed={cfg.seed} epochs={cfg.epochs} on {device}, "
            f"{threads} thread{'s' if threads != 1 else ''}")
    if (replicas := cfg.ddp.replicas) > 1:
        text += f" x {replicas} replicas ({cfg.bs // replicas} samples each)"
    return f"{text} [{overrides}]" if overrides else text


# Keys `describe` already shows, and db.url, which the sweep's first and last lines name.
DESCRIBED = ("task", "dataset", "model", "norm", "bs", "lr", "seed", "epochs", "device", "threads",
             "db.url", "ddp.replicas")

# The test metrics the INFO line shows: each task's headline numbers (classify loss and acc,
# autoencode loss = mse, the GAN's cfid); everything else is at DEBUG and in the database.
MAIN_TEST_METRICS = ("loss", "acc", "cfid")


def epoch_line(metrics: dict) -> str | None:
    """'train loss 0.4123 | test loss 0.3012 acc 0.9011 | 12.3 s', None when nothing main."""
    train = " ".join(f"{n} {v:.4g}" for n, v in train_losses(metrics).items())
    test = " ".join(f"{n} {metrics['test', n]:.4g}" for n in MAIN_TEST_METRICS
                    if ("test", n) in metrics)
    if not (train or test):
        return None
    parts = [f"train {train}" if train else "", f"test {test}" if test else ""]
    seconds = sum(metrics.get((s, "time_s"), 0.0) for s in ("train", "test"))
    if seconds:
        parts.append(f"{seconds:.1f} s")
    return " | ".join(p for p in parts if p)
