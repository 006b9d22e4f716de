"""The command line, checked before Hydra composes anything (or saves the overrides in .hydra/):
an unknown group option gets our one-line message instead of Hydra's multi-line one, an unknown
key is named with the allowed ones, and a db.url with a password never reaches a stored file.
The composed config is `runners.validate.check_config`'s."""

from omegaconf import OmegaConf

from bench.checks import require_name
from bench.errors import UserError, choices
from bench.launchers import check_launcher
from runners.validate import CONF_DIR, GROUPS, URL_IN_TEXT, check_no_password, check_residual, group_options


def check_overrides(args: list[str]) -> None:
    """Reject, before Hydra composes anything (or saves the overrides in .hydra/), a db.url with a
    password, an unknown option of a config group and an unknown key anywhere in the command
    line's overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    for arg in candidates:  # as typed: Hydra prints an override in its errors
        key, _, value = arg.partition("=")
        if key.lstrip("+~") in ("db", "db.url"):  # db.url=URL, db.url=URL1,URL2, db={url:URL}
            for url in {value.strip("'\""), *URL_IN_TEXT.findall(value)}:
                check_no_password(url)
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # a syntax error: Hydra reports it with the position of the mistake
    for o in overrides:  # as Hydra reads them: quoted, escaped, choice(...)
        if o.key_or_group.lstrip("+~") == "db.url" and not o.is_delete():
            for url in (o.sweep_string_iterator() if o.is_sweep_override()
                        else [o.get_value_element_as_str()]):
                check_no_password(url)
    chosen = _check_group_options(overrides)
    for o in overrides:  # Hydra's own message for an unknown launcher is ten lines, exit 1
        if (o.key_or_group.lstrip("+~") == "hydra/launcher" and not o.is_delete()
                and not o.is_sweep_override()):
            check_launcher(o.get_value_element_as_str())
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
            if not (group == "experiment" and v == "null"):
                require_name(group, v, allowed)
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
                    if key == "model.residual":  # say why: the model has no residual blocks
                        o = next(o for o in overrides if o.key_or_group == key)
                        check_residual(cfg.model.name, ",".join(o.sweep_string_iterator())
                                       if o.is_sweep_override() else o.get_value_element_as_str())
                    # Name the options that decide whether the key exists: its own group's
                    # (norm.groups: norm=bn) and a preset's, which may add keys anywhere.
                    where = " ".join(f"{g}={v}" for g, v in zip(groups, combo, strict=True)
                                     if g in (key.split(".")[0], "experiment"))
                    known = choices(node.keys()) if OmegaConf.is_dict(node) else "none"
                    raise UserError(f"unknown setting '{key}'{' with ' + where if where else ''} "
                                    f"(allowed{' in ' + parent if parent else ''}: {known})")
