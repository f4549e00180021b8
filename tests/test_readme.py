"""The README's examples and tables stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings
from app.main import create_app

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_configuration_table_lists_exactly_the_settings() -> None:
    documented = set(re.findall(r"^\| `SEGMENT_([A-Z_]+)` \|", README, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_configuration_table_defaults_match() -> None:
    rows = dict(re.findall(r"^\| `SEGMENT_([A-Z_]+)` \| `([^`]*)`", README, flags=re.M))
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, bool):
            expected = str(default).lower()
        elif isinstance(default, list) or default is None:
            expected = ",".join(default or [])
        else:
            expected = str(default)
        assert rows[name.upper()] == expected.removesuffix(".0"), name


def test_curl_example_fields_are_the_api_fields() -> None:
    curl = README.split("```sh\ncurl", 1)[1].split("```", 1)[0]
    sent = set(re.findall(r"(?:-F|--form-string) \"?(\w+)=", curl))
    schema = create_app(Settings()).openapi()  # type: ignore[call-arg]
    body_ref = schema["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"][
        "schema"
    ]["$ref"].rsplit("/", 1)[1]
    fields = set(schema["components"]["schemas"][body_ref]["properties"])
    assert sent and sent <= fields
    documented = set(re.findall(r"^\| `(\w+)` \| (?:required|one of|optional)", README, flags=re.M))
    assert documented == fields


def test_the_two_commands_come_first() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block
