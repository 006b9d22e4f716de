"""Step 3 of a job's life (`runners.job`): claim its config in the database, and when it
continues an interrupted run, load that run's checkpoint and rewind the run's metrics to it.

What a rerun of the same command does with each config (`db.claims` decides, atomically):
- completed, or diverged (a result; `checkpoint.retry_diverged=true` trains it again): skipped;
- running elsewhere (a live heartbeat): skipped, with the run id and host in the job's line;
- interrupted (killed, SIGTERM, Ctrl-C, a submitit requeue; with `checkpoint.resume_failed=true`
  also an exception): continued in the same row from its last checkpoint, attempts + 1;
- `resume=false`: trained again on purpose in a new row that records `repeat_of`.
"""

import logging

from omegaconf import DictConfig

from bench.checkpoint import Checkpoint, path_for
from bench.errors import UserError

log = logging.getLogger("bench")


def claim_run(db, cfg: DictConfig, config: dict, digest: str, *, output_dir: str | None,
              device: str, threads: int, launcher: str, scheduler_job_id: str | None):
    """(run id, attempt, `Checkpoint`, None) for a run this process now trains (its checkpoint
    loaded when it resumes), or (None, 0, None, {'run_id', 'status': 'skipped', 'why',
    'running_elsewhere'}) for a skip.
    A checkpoint unusable with checkpoint.strict=true: the row is closed 'failed' (failure
    'checkpoint', resumed by the next rerun) and `UserError` raised."""
    row = db.new_row(task=cfg.task.name, dataset=cfg.dataset.name, model=cfg.model.name,
                     norm=cfg.norm.name, bs=cfg.bs, lr=cfg.lr, seed=cfg.seed, epochs=cfg.epochs,
                     config=config, config_hash=digest, output_dir=output_dir, device=device,
                     threads=threads, launcher=launcher, scheduler_job_id=scheduler_job_id)
    ck = cfg.checkpoint
    got = db.claim(row, resume=cfg.resume, stale_after_s=cfg.db.heartbeat.stale_after_s,
                   scheduler_job_id=scheduler_job_id, output_dir=output_dir,
                   resume_failed=ck.resume_failed, retry_diverged=ck.retry_diverged)
    if got.action == "skip":
        # status 'skipped' either way (bench.run's single-run summary knows no other); the
        # sweep's summary counts a live run elsewhere apart (hydra_plugins/normbench_sweeper)
        return None, 0, None, {"run_id": got.run_id, "status": "skipped", "why": got.why,
                               "running_elsewhere": got.status == "running elsewhere"}
    checkpoint = Checkpoint(path_for(ck.dir, digest, got.uid), digest, every=ck.every,
                            strict=ck.strict)
    if got.action == "resume":
        try:
            epoch = checkpoint.load()
        except UserError as e:
            db.finish(got.run_id, "failed", str(e), failure="checkpoint")
            raise
        db.rewind(got.run_id, epoch)
        checkpoint.resumed = got.why  # for the job's first line
    return got.run_id, got.attempt, checkpoint, None
