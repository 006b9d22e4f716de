"""`python -m bench.run --help`: our page through Hydra's help template, checked against conf/."""

import shlex

import pytest
from conftest import compose_config, run_main

from runners.overrides import check_overrides
from runners.validate import GROUPS, group_options


@pytest.fixture(scope="module")
def help_page(tmp_path_factory) -> str:
    cwd = tmp_path_factory.mktemp("help")
    proc = run_main(cwd, "--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert list(cwd.iterdir()) == []  # no outputs/ for a help page
    return proc.stdout


def test_the_help_page_lists_every_group_with_its_options(help_page):
    for group in GROUPS:
        assert f"{group}: {', '.join(group_options(group))}" in help_page.splitlines()


def test_the_help_page_has_a_line_for_every_top_level_key(help_page):
    cfg = compose_config()
    section = help_page.split("== Top-level keys")[1].split("\n\n")[0].splitlines()[1:]
    listed = {line.split()[0].split("=")[0].split(".")[0] for line in section}
    assert listed == set(cfg) - set(GROUPS)


def test_every_example_command_names_real_groups_and_keys(help_page):
    examples = [line.split()[3:] for line in help_page.splitlines()
                if line.startswith("  python -m bench.run ")]
    assert len(examples) == 5
    assert any(e[:3] == ["-m", "norm=bn,gn,none", "bs=2,128,512,2000"] for e in examples)
    assert any("--cfg" in e for e in examples) and any("hydra/launcher=joblib" in e for e in examples)
    for words in examples:
        args = [w for w in words if "=" in w or w.startswith("-")]
        check_overrides(args)  # raises UserError on an unknown option or key


def test_hydras_own_help_still_works(tmp_path):
    proc = run_main(tmp_path, "--hydra-help")
    assert proc.returncode == 0 and "== Flags ==" in proc.stdout


def test_help_with_a_bad_option_is_our_one_line_error(tmp_path):
    proc = run_main(tmp_path, *shlex.split("--help norm=foo"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown norm 'foo' (allowed: bcn, bn,")
