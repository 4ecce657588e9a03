"""The README is part of the product: its commands and tables must match the code."""

import re
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_settings_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `ALEXNET_([A-Z_]+)`", README, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    install_and_test = next(block for block in blocks if "[dev]" in block and "pytest" in block)
    assert install_and_test.strip() in ci
    assert any("pip install -e . && alexnet-serve" in block for block in blocks)


def test_error_codes_in_readme_exist_in_the_code() -> None:
    source = "\n".join(path.read_text() for path in (ROOT / "app").glob("*.py"))
    for code in re.findall(r"`([a-z_]+)`", README.split("## Errors")[1].split("## Other")[0]):
        if code.startswith(("alexnet", "max")) or code == "top_k":
            continue
        assert f'"{code}"' in source or code in ("not_found", "method_not_allowed"), code
