"""The README states what the code does: its config table and its test command are checked here."""

import pathlib
import re

from spark_torch.config import config_reference_markdown

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_config_table_is_generated_from_field_metadata():
    table = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", README, re.S).group(1)
    assert table == config_reference_markdown()


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    commands = [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
    assert any("spark-torch demo" in c for c in commands)


def test_quickstart_runs_as_written():
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    assert namespace["spikes"].shape == (25, 32, 10)
