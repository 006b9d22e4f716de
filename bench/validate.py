"""Bad input, caught before any work starts and reported as one line.

Two places: `check_overrides` reads the command line before Hydra composes anything (so an unknown
group option gets our one-line message, not Hydra's multi-line one), and `check_config` checks a
composed job config. The sweeper (`hydra_plugins.normbench_sweeper`) runs `check_config` on every
job of a sweep before the first one starts, so a bad value in a sweep loses no work.
"""

import numbers
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.errors import UserError, choices

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("task", "dataset", "model", "norm", "optim", "sched", "experiment")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(args: list[str]) -> None:
    """Reject, before Hydra composes anything, an unknown option of a config group and an unknown
    key anywhere in the command line's overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # a syntax error: Hydra reports it with the position of the mistake
    chosen = _check_group_options(overrides)
    _check_keys(overrides, chosen)


def _check_group_options(overrides) -> dict[str, list[str]]:
    """Each group's options named on the command line (all values of a sweep), all known."""
    chosen = {}
    for o in overrides:
        group = o.key_or_group.lstrip("+~")
        if group not in GROUPS or o.is_delete():
            continue
        if o.is_sweep_override():
            if o.value_type is not None and o.value_type.name == "GLOB_CHOICE_SWEEP":
                continue
            values = list(o.sweep_string_iterator())
        else:
            values = [o.get_value_element_as_str()]
        allowed = group_options(group)
        for v in values:
            if v not in allowed and not (group == "experiment" and v == "null"):
                raise UserError(f"unknown {group} '{v}' (allowed: {choices(allowed)})")
        chosen[group] = values
    return chosen


def _check_keys(overrides, chosen: dict[str, list[str]]) -> None:
    """An override of a key that no config has (`norm.gropus=4`, `bss=2`) is a one-line error,
    checked against every combination of the group options the command line sweeps over."""
    import itertools

    from hydra import compose, initialize_config_dir

    # `+key=` adds a key on purpose and `~key` deletes one: Hydra's business, not checked here.
    keys = [o.key_or_group for o in overrides if o.key_or_group not in GROUPS
            and not o.key_or_group.startswith("hydra") and "/" not in o.key_or_group
            and o.package is None
            and not (o.is_add() or o.is_force_add() or o.is_delete())]
    if not keys:
        return
    groups = sorted(chosen)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for combo in itertools.product(*(chosen[g] for g in groups)):
            cfg = compose("config", overrides=[f"{g}={v}" for g, v in zip(groups, combo,
                                                                            strict=True)])
            for key in keys:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                if not OmegaConf.is_dict(node) or leaf not in node:
                    where = " ".join(f"{g}={v}" for g, v in zip(groups, combo, strict=True))
                    known = choices(node.keys()) if OmegaConf.is_dict(node) else "none"
                    raise UserError(f"unknown setting '{key}'{' with ' + where if where else ''} "
                                    f"(allowed{' in ' + parent if parent else ''}: {known})")


def _positive(cfg: DictConfig, key: str, kind: type) -> None:
    v = OmegaConf.select(cfg, key)
    ok_type = isinstance(v, numbers.Integral) if kind is int else isinstance(v, numbers.Real)
    if isinstance(v, bool) or not ok_type or not v > 0:
        what = "a positive integer" if kind is int else "a positive number"
        raise UserError(f"{key}={v!r} is not {what}")


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no training: names, ranges, batch size vs data, the model builds.

    The checks of plain values come first and import nothing heavy, so `bs=0` is reported in
    about a second; torch (~3 s to import) comes in for the checks that need it."""
    for key in ("bs", "epochs", "eval_bs", "accum_steps", "bn_eval.precise_samples"):
        _positive(cfg, key, int)
    if cfg.bs % cfg.accum_steps:
        divisors = ", ".join(str(d) for d in range(1, cfg.bs + 1) if cfg.bs % d == 0)
        raise UserError(f"accum_steps={cfg.accum_steps} does not divide bs={cfg.bs} "
                        f"(allowed: the divisors of bs, {divisors})")
    if cfg.bn_eval.modes not in (True, False):
        raise UserError(f"bn_eval.modes={cfg.bn_eval.modes!r} is not allowed (allowed: true, false)")
    _positive(cfg, "lr", float)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, numbers.Integral):
        raise UserError(f"seed={cfg.seed!r} is not an integer")
    for key in ("channels_last", "amp", "progress"):
        if cfg[key] not in ("auto", True, False):
            raise UserError(f"{key}={cfg[key]!r} is not allowed (allowed: auto, true, false)")

    import torch

    from bench.data import DATASETS, dataset_train_size
    from bench.data.loader import COMPOSITIONS
    from runners import RUNNERS

    for key in ("train", "precise"):
        if cfg.batch_composition[key] not in COMPOSITIONS:
            raise UserError(f"batch_composition.{key}={cfg.batch_composition[key]!r} is not allowed "
                            f"(allowed: {choices(COMPOSITIONS)})")
    for key, allowed in (("task.name", RUNNERS), ("dataset.name", DATASETS)):
        v = OmegaConf.select(cfg, key)
        if v not in allowed:
            raise UserError(f"unknown {key.split('.')[0]} '{v}' (allowed: {choices(allowed)})")
    from bench.models import MODEL_TASKS, models_for

    model, task = cfg.model.name, cfg.task.name
    if MODEL_TASKS.get(model, task) != task:  # an unknown model is build_model's error
        raise UserError(f"model '{model}' is a model for task {MODEL_TASKS[model]}, not {task} "
                        f"(allowed with task={task}: {choices(models_for(task))})")
    ds = cfg.dataset
    n_train = dataset_train_size(ds.name, train_subset=ds.train_subset, **ds.get("options", {}))
    if cfg.bs > n_train:
        raise UserError(
            f"bs={cfg.bs} is larger than the {n_train} training images of '{ds.name}' "
            f"(allowed: 1..{n_train})"
        )
    virtual_bs, micro = OmegaConf.select(cfg, "norm.virtual_bs"), cfg.bs // cfg.accum_steps
    if virtual_bs is not None and virtual_bs > micro:
        raise UserError(f"norm.virtual_bs={virtual_bs} is larger than bs={micro} "
                        f"{'per micro-batch ' if cfg.accum_steps > 1 else ''}(allowed: 1..{micro})")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(cfg.db.url)
    except ArgumentError:
        raise UserError(f"cannot parse db.url '{cfg.db.url}' (e.g. sqlite:///results/bench.db)") \
            from None
    # The task builds its model on the meta device: shapes and layer settings are checked
    # (a group count that does not divide a layer, an unknown setting) without allocating.
    with torch.device("meta"):
        RUNNERS[cfg.task.name].check(cfg)
