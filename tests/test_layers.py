"""Imports run one way: building blocks (bench/) -> config-reading layer (runners/) -> entry point
(bench/run.py, bench/cli.py, the sweeper). Read from the source with `ast`, so a lazy import
inside a function counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY = {"bench.run", "bench.cli", "hydra_plugins"}


def module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported(path: Path, name: str | None = None) -> set[str]:
    """Every module `path` (module `name`) imports, anywhere in the file (relative imports
    resolved)."""
    names, here = set(), (name or module(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def within(name: str, roots) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


BLOCKS = [p for p in (ROOT / "bench").rglob("*.py") if module(p) not in ENTRY]
RUNNERS = sorted((ROOT / "runners").rglob("*.py"))


@pytest.mark.parametrize("path", BLOCKS, ids=module)
def test_building_blocks_import_no_config_layer_and_no_hydra(path):
    bad = {n for n in imported(path)
           if within(n, ("runners", "hydra", "omegaconf.DictConfig", *ENTRY))}
    # bench.checks prints OmegaConf's lists as plain ones (`show`); it reads no config.
    assert not bad, f"{module(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", RUNNERS, ids=module)
def test_runners_do_not_import_the_entry_point(path):
    bad = {n for n in imported(path) if within(n, ENTRY)}
    assert not bad, f"{module(path)} imports {sorted(bad)}"


def test_the_checker_sees_a_lazy_and_a_relative_import(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("def g():\n    from runners.config import group_kwargs\nfrom ..run import main\n")
    names = imported(f, "bench.data.probe")
    assert "runners.config.group_kwargs" in names and within("runners.config", ("runners",))
    assert "bench.run" in names  # `..run` from bench/data/
