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

# Settings added after runs were stored: (key, the value every config from before it means, the
# keys that only matter when the setting is not at that value). At that value a setting and its
# dependents are left out (`as_before`), so every older config keeps its hash and the report
# shows the setting only once some run moved it. `ddp.port`, `.timeout_s` and `.oversubscribe`
# never change a result (bookkeeping).
LATER_SETTINGS = (
    ("ddp.replicas", 1, ("ddp.buffers",)),                  # one process: data parallelism off
    ("agc.clipping", 0, ("agc.eps", "agc.skip_last")),      # adaptive gradient clipping off
    ("model.residual", "plain", ()),                        # torchvision's residual blocks
)
NESTED_BOOKKEEPING = ("ddp.port", "ddp.timeout_s", "ddp.oversubscribe")


def _drop(config: dict, key: str) -> None:
    """Remove the dotted `key` from `config` in place, and its node when that becomes empty."""
    parent, _, leaf = key.rpartition(".")
    node = config.get(parent)
    if isinstance(node, dict) and leaf in node:
        config[parent] = node = {k: v for k, v in node.items() if k != leaf}
        if not node:
            del config[parent]


def as_before(config: dict) -> dict:
    """`config` without the later settings (LATER_SETTINGS) that are at the value older configs
    mean, nor their dependents, nor the nested bookkeeping keys; what is left decides the result."""
    out = dict(config)
    for key in NESTED_BOOKKEEPING:
        _drop(out, key)
    for key, before, dependents in LATER_SETTINGS:
        parent, _, leaf = key.rpartition(".")
        if (out.get(parent) or {}).get(leaf, before) == before:
            for k in (key, *dependents):
                _drop(out, k)
    return out


def config_hash(config: dict) -> str:
    """sha256 of the config that decides the result (bookkeeping keys removed), canonical JSON."""
    kept = {k: v for k, v in as_before(config).items() if k not in BOOKKEEPING_KEYS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
