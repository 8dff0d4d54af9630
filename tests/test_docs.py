"""The documentation stays true to the code: every config key is in docs/CONFIG.md with its default and meaning."""
from __future__ import annotations

from pathlib import Path

import pytest

from wan_dist import config_docs

REPO = Path(__file__).resolve().parents[1]


def test_config_md_matches_the_schema():
    want = config_docs.markdown()
    have = (REPO / "docs" / "CONFIG.md").read_text()
    assert have == want, ("docs/CONFIG.md is out of date with wan_dist/config.py or conf/: regenerate it with "
                          "`python -m wan_dist.config_docs > docs/CONFIG.md`")


def test_every_key_has_a_meaning_and_a_default():
    missing = [key for key, default, doc in config_docs.rows(values=config_docs.config_mod.compose(
        ["ckpt_dir=x", "prompt=x"])) if not doc.strip() or default == ""]
    assert not missing, f"schema fields without a _doc(...) text: {missing}"


def test_readme_links_the_config_reference():
    readme = (REPO / "README.md").read_text()
    assert "docs/CONFIG.md" in readme


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_tools_list_every_subcommand():
    from wan_dist.cli import SUBCOMMANDS
    tools = _section((REPO / "README.md").read_text(), "Tools")
    missing = [name for name in ["torchrun", *SUBCOMMANDS] if f"`wan-dist {name}" not in tools]
    assert not missing, f"README 'Tools' does not list: {missing}"


def test_readme_links_the_guides():
    readme = (REPO / "README.md").read_text()
    for target in ("docs/PARALLEL.md", "examples/README.md", "examples/multi_gpu.sh", "docs/BENCHMARKS.md",
                   "(bench/)", "docs/ARCHITECTURE.md"):
        assert target in readme, target
    multi = _section(readme, "Multi-GPU")
    assert "parallel.dp=-1" in multi and "dp x parallel.cfg x parallel.ulysses x parallel.ring" in multi
    for target in ("docs/PARALLEL.md", "examples/multi_gpu.sh"):   # every link resolves to a file here
        assert (REPO / target).is_file()


@pytest.mark.parametrize("doc", ["README.md", "examples/README.md", "docs/PARALLEL.md", "docs/ARCHITECTURE.md",
                                 "docs/BENCHMARKS.md", "docs/CONFIG.md"])
def test_relative_links_resolve(doc):
    """A newcomer following a link from the docs finds the file (images and scripts included)."""
    import re
    path = REPO / doc
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", path.read_text())
             if not t.startswith(("http://", "https://", "#", "mailto:"))]
    broken = [t for t in links if t and not (path.parent / t).exists()]
    assert not broken, f"{doc}: links to missing files: {broken}"
