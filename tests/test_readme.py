"""The README's published numbers come from files a run wrote, with the code as it is now."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
publish = runpy.run_path(str(ROOT / "docs" / "publish_demo.py"))


def test_readme_demo_table_is_the_published_demo_summary():
    readme = (ROOT / "README.md").read_text()
    assert publish["readme_block"](readme) == (ROOT / "docs" / "demo" / "summary.md").read_text().strip()


def test_published_demo_was_made_by_the_current_code():
    provenance = json.loads((ROOT / "docs" / "demo" / "provenance.json").read_text())
    assert provenance["source_digest"] == publish["source_digest"](), (
        "the code or configuration behind the demo changed since its results were published: rerun "
        "`snakemake --cores all --configfile config/demo.yaml` and `python docs/publish_demo.py`"
    )
