"""The identity of a config: `config_hash`, and the bookkeeping keys it leaves out.

Torch-free on purpose: the analysis (analysis/cells.py) reads `BOOKKEEPING_KEYS` too, and must
not pay torch's import (~3.6 s) for a tuple of names.
"""

import hashlib
import json

# Keys that do not change what a run computes: left out of the config hash, so a sweep rerun on
# another machine, with another thread count or database, still finds its completed runs.
# Changing this tuple changes the hash of every config, and existing databases would no longer
# resume their completed runs; adding a key that older configs do not have (`checkpoint`) leaves
# their hashes as they were.
BOOKKEEPING_KEYS = ("db", "resume", "progress", "device", "threads", "data_root", "channels_last",
                    "checkpoint")

# Of `ddp` (data parallelism), what changes the result; the port, timeout and oversubscription
# are bookkeeping.
DDP_RESULT_KEYS = ("replicas", "buffers")


def ddp_setting(config: dict) -> dict:
    """What of config's `ddp` decides the result: {'replicas': 1} for a one-process run (also
    what every config from before `ddp` existed describes; how buffers are reconciled means
    nothing there), else the replicas and `buffers`."""
    ddp = config.get("ddp") or {}
    if ddp.get("replicas", 1) == 1:
        return {"replicas": 1}
    return {k: ddp[k] for k in DDP_RESULT_KEYS if k in ddp}


def agc_setting(config: dict) -> dict | None:
    """config's `agc` (adaptive gradient clipping, bench/agc.py) when on (clipping > 0), else None:
    off is what every config from before `agc` existed describes, and eps and skip_last then change
    nothing."""
    agc = config.get("agc") or {}
    return dict(agc) if agc.get("clipping", 0) else None


def config_hash(config: dict) -> str:
    """sha256 of the config that decides the result (bookkeeping keys removed), canonical JSON."""
    kept = {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}
    kept.pop("ddp", None)
    if (ddp := ddp_setting(config))["replicas"] != 1:  # one process: the hash it always had
        kept["ddp"] = ddp
    kept.pop("agc", None)
    if (agc := agc_setting(config)) is not None:  # off: the hash it always had
        kept["agc"] = agc
    if (config.get("model") or {}).get("residual") == "plain":  # plain: the hash it always had
        kept["model"] = {k: v for k, v in config["model"].items() if k != "residual"}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
