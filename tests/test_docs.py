"""The README documents exactly the config keys the schema has, and its examples load."""

import re
from pathlib import Path

from seq2seq.config import load_config, schema_keys

ROOT = Path(__file__).resolve().parents[1]


def documented_keys() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- config-keys:start -->")[1].split("<!-- config-keys:end -->")[0]
    return re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.MULTILINE)


def test_every_schema_key_is_documented_and_vice_versa():
    documented = documented_keys()
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert set(documented) == set(schema_keys())


def test_every_example_config_loads():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name.startswith("sweep"):
            continue
        load_config(path)


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
