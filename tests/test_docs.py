"""The documentation stays true to the code: every config key is in docs/CONFIG.md with its default and meaning."""
from __future__ import annotations

from pathlib import Path

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
