"""The documents, checked without a server: the configuration reference is what its generator
writes from the settings models; every relative link and #anchor in the README, the root documents
and docs/ resolves; and the names the documents use (variables, metrics, error codes, make targets,
commands) are ones the code has."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import unicodedata
from pathlib import Path

import pytest

from gateway import config_reference
from gateway.cli import main as gateway_cli
from gateway.domain.refunds import Stage, Status
from gateway.openapi import ERROR_CODES
from gateway.settings import (
    BridgePayProcessor,
    ClientConfig,
    MockProcessor,
    ProcessorBase,
    Settings,
    StripeProcessor,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
ROOT_DOCUMENTS = [REPO / name for name in ("README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md")]
DOCUMENTS = [*ROOT_DOCUMENTS, *sorted(DOCS.rglob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(path: Path) -> str:
    """The document without its fenced code blocks (their `# comments` are no headings)."""
    return _FENCE.sub("", path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(prose(path)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    text = _INLINE_CODE.sub("", prose(path))
    return [target for target in _LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]  # http:, https:, mailto:


# --- the configuration reference ---------------------------------------------------------------

def test_configuration_md_is_what_the_generator_writes():
    assert CONFIGURATION.read_text() == config_reference.render(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m gateway.config_reference > docs/configuration.md`")


def table_rows(section: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in section.splitlines() if line.startswith("| `")]


def section_of(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_every_setting_is_in_the_configuration_reference_with_its_variable_and_default():
    text = CONFIGURATION.read_text()
    rows = {row[1].strip("`"): row for row in table_rows(text.split("\n## Processor accounts\n")[0])}
    assert set(rows) == set(Settings.model_fields)
    for name, row in rows.items():
        variable, _, default, _, meaning = row
        assert variable == f"`GATEWAY_{name.upper()}`", row
        assert default and meaning, row
    assert rows["shutdown_grace_seconds"][2] == "`10`"
    assert rows["callback_timeout_seconds"][2] == "`10`"
    for name in ("retry_initial_backoff_seconds", "retry_max_backoff_seconds", "pending_poll_seconds",
                 "webhook_poll_seconds", "janitor_poll_seconds", "callback_initial_backoff_seconds",
                 "callback_max_backoff_seconds", "callback_poll_seconds"):
        assert rows[name][4], name


@pytest.mark.parametrize("heading, model", [
    ("## Processor accounts", ProcessorBase), ("### Stripe", StripeProcessor), ("### BridgePay", BridgePayProcessor),
    ("### The mock", MockProcessor), ("## API clients", ClientConfig)], ids=lambda v: getattr(v, "__name__", v))
def test_every_processor_and_client_field_is_in_the_configuration_reference(heading, model):
    text = CONFIGURATION.read_text()
    documented = {row[0].strip("`") for row in table_rows(section_of(text, heading))}
    own = set(model.model_fields) if model in (ProcessorBase, ClientConfig) else (
        set(model.model_fields) - set(ProcessorBase.model_fields))
    assert own <= documented, f"{model.__name__}: {sorted(own - documented)} missing under {heading}"
    if model is MockProcessor:
        assert "lookup" in documented
    if model is ClientConfig:
        [burst] = [row for row in table_rows(section_of(text, heading)) if row[0] == "`rate_limit_burst`"]
        assert burst[1] == f"`{ClientConfig.model_fields['rate_limit_burst'].default}`"


def test_a_field_without_a_meaning_or_a_comment_stops_the_generator(monkeypatch):
    monkeypatch.setattr(config_reference, "CLIENT", {k: v for k, v in config_reference.CLIENT.items() if k != "id"})
    comments = config_reference.source_comments
    monkeypatch.setattr(config_reference, "source_comments",
                        lambda model: {k: v for k, v in comments(model).items() if k != "id"})
    with pytest.raises(ValueError, match=r"ClientConfig: no meaning for \['id'\]"):
        config_reference.render()


def test_the_configuration_example_loads(tmp_path, monkeypatch):
    [example] = re.findall(r"```toml\n(.*?)```", CONFIGURATION.read_text(), re.S)
    (tmp_path / "gateway.toml").write_text(example)
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", example)):
        value = f"{name.lower()}_0123456789abcdef"
        monkeypatch.setenv(name, hashlib.sha256(value.encode()).hexdigest() if name.endswith("SHA256") else value)
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "gateway.toml"))
    settings = load_settings()
    assert {p.kind for p in settings.processors} == {"stripe", "bridgepay"}


# --- links -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_and_a_heading(path):
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_the_link_checker_finds_links_and_anchors():
    assert "docs/api.md" in relative_links(REPO / "README.md")
    assert "a-refund-step-by-step" in anchors(REPO / "README.md")
    assert slug("Polling: GET /v1/events") == "polling-get-v1events"
    assert slug("A refund's life") == "a-refunds-life"


# --- the README is the front door ---------------------------------------------------------------

def test_the_readme_is_short_and_points_at_every_document():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 170, "the README is the front door: move detail to docs/"
    links = set(relative_links(REPO / "README.md"))
    for doc in sorted(DOCS.rglob("*.md")):
        assert str(doc.relative_to(REPO)) in links, f"the README does not point at {doc.relative_to(REPO)}"
    for heading in ("## Start here", "## A refund, step by step", "## Where everything else is"):
        assert f"\n{heading}\n" in readme
    assert "make run" in readme and "make test" in readme


# --- names the documents use are the code's ------------------------------------------------------

def every_document_text() -> str:
    return "\n".join(path.read_text() for path in DOCUMENTS)


def test_every_gateway_variable_named_in_the_documents_is_a_setting():
    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9]\b", every_document_text()))
    assert named - known == set(), "documented variables no setting reads"


def test_every_metric_is_documented_and_every_documented_metric_exists():
    source = (REPO / "gateway" / "metrics.py").read_text()
    defined = set(re.findall(r"\"(psp_gateway_[a-z_]+)\"", source))
    observability = (DOCS / "observability.md").read_text()
    assert defined and {m for m in defined if f"`{m}`" not in observability} == set()
    named = set(re.findall(r"\bpsp_gateway_[a-z_]+", every_document_text()))
    assert named - defined == set(), "documented metrics the gateway does not export"


def test_every_error_code_is_in_the_api_document():
    api = (DOCS / "api.md").read_text()
    internal = {"internal_error", "http_error"}  # a bug, or an HTTP error without a code of its own
    assert {code for code in ERROR_CODES if code not in internal and f"`{code}`" not in api} == set()


def test_every_refund_status_and_stage_is_in_the_api_document():
    api = (DOCS / "api.md").read_text()
    assert {v.value for v in (*Status, *Stage) if f"| `{v.value}` |" not in api} == set()


def every_code_span() -> str:
    """The fenced blocks and the inline code of every document: where commands are written."""
    text = every_document_text()
    return "\n".join([*(m.group(0) for m in _FENCE.finditer(text)), *_INLINE_CODE.findall(_FENCE.sub("", text))])


def test_every_make_target_the_documents_name_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", every_code_span()))
    assert named and named - targets == set()


def test_every_psp_gateway_command_the_documents_name_exists():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        gateway_cli(["--help"])
    commands = set(re.search(r"\{([a-z,-]+)\}", out.getvalue()).group(1).split(","))
    named = set(re.findall(r"\bpsp-gateway ([a-z][a-z-]+)", every_code_span()))
    assert named and named - commands == set()


# --- the root documents ------------------------------------------------------------------------

def test_the_license_is_the_full_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000


def test_security_policy_asks_for_private_vulnerability_reporting_not_an_address():
    text = (REPO / "SECURITY.md").read_text()
    assert "private vulnerability reporting" in text
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+|@<", text), "no e-mail address or placeholder"
    for heading in ("## What to include", "## What is in scope"):
        assert heading in text


def test_contributing_says_how_to_regenerate_the_lock_and_add_a_processor():
    text = (REPO / "CONTRIBUTING.md").read_text()
    assert "make lock" in text and "uv.lock" in text
    for word in ("client.py", "transformers.py", "Capabilities", "NEXT_ACTIONS", "CASES", "simulator"):
        assert word in text, word


def test_the_changelog_is_newest_first():
    text = (REPO / "CHANGELOG.md").read_text()
    dates = re.findall(r"^## (\d{4}-\d{2}-\d{2})", text, re.M)
    assert dates and dates == sorted(dates, reverse=True)
