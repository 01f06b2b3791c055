"""Settings: the TOML file named by GATEWAY_CONFIG, ${VAR} expansion, environment overrides, and
configuration errors that name the failing field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import main
from gateway.settings import (
    BridgePayProcessor,
    ConfigError,
    MockProcessor,
    Settings,
    StripeProcessor,
    load_settings,
    missing_parts,
    unknown_variables,
)

CLIENT = """
[[clients]]
id = "billing"
api_key = "sk_test_billing_0123456789"
scopes = ["refunds:write", "refunds:read"]
"""

FULL = """
port = 8181

[[processors]]
id = "mock"
kind = "mock"
pending_settle_seconds = 0.5

[[processors]]
id = "stripe-eu"
kind = "stripe"
api_key = "${TEST_STRIPE_KEY}"
webhook_secrets = ["whsec_first_0123456789", "${TEST_STRIPE_WHSEC}"]

[[processors]]
id = "bridgepay"
kind = "bridgepay"
base_url = "https://bridgepay.example"
username = "gateway"
password = "${TEST_BP_PASSWORD}"
merchant_code = "M-100"
merchant_account_code = "MA-200"

[[clients]]
id = "billing"
api_key = "sk_test_billing_0123456789"
scopes = ["transactions:write", "refunds:write", "refunds:read"]

[[clients]]
id = "ops"
api_key = "sk_test_ops_000123456789"
scopes = ["admin"]
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("GATEWAY_CONFIG", "GATEWAY_PORT", "TEST_STRIPE_KEY", "TEST_STRIPE_WHSEC", "TEST_BP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write a TOML config and point GATEWAY_CONFIG at it."""

    def write(text: str) -> Path:
        path = tmp_path / "gateway.toml"
        path.write_text(textwrap.dedent(text))
        monkeypatch.setenv("GATEWAY_CONFIG", str(path))
        return path

    return write


@pytest.fixture
def full_env(monkeypatch):
    monkeypatch.setenv("TEST_STRIPE_KEY", "sk_live_from_the_environment")
    monkeypatch.setenv("TEST_STRIPE_WHSEC", "whsec_second_from_env")
    monkeypatch.setenv("TEST_BP_PASSWORD", "bp-password-from-env")


def config_error(**overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    return str(info.value)


# --- loading ----------------------------------------------------------------------------------

def test_full_config_file_loads_every_processor_and_client(config_file, full_env):
    config_file(FULL)
    s = load_settings()
    assert [p.id for p in s.processors] == ["mock", "stripe-eu", "bridgepay"]
    mock, stripe, bridgepay = s.processors
    assert isinstance(mock, MockProcessor) and mock.pending_settle_seconds == 0.5
    assert isinstance(stripe, StripeProcessor)
    assert isinstance(bridgepay, BridgePayProcessor)
    assert (bridgepay.username, bridgepay.merchant_code, bridgepay.merchant_account_code) == (
        "gateway", "M-100", "MA-200")
    assert bridgepay.base_url == "https://bridgepay.example"
    assert [(c.id, c.scopes) for c in s.clients] == [
        ("billing", ["transactions:write", "refunds:write", "refunds:read"]), ("ops", ["admin"])]
    assert s.clients[0].api_key.get_secret_value() == "sk_test_billing_0123456789"
    assert s.port == 8181


def test_environment_references_in_the_file_are_expanded(config_file, full_env):
    config_file(FULL)
    s = load_settings()
    stripe, bridgepay = s.processor("stripe-eu"), s.processor("bridgepay")
    assert stripe.api_key.get_secret_value() == "sk_live_from_the_environment"
    assert [w.get_secret_value() for w in stripe.webhook_secrets] == ["whsec_first_0123456789",
                                                                      "whsec_second_from_env"]
    assert bridgepay.password.get_secret_value() == "bp-password-from-env"


def test_environment_reference_inside_a_longer_string_is_expanded(config_file, monkeypatch):
    monkeypatch.setenv("TEST_BP_PASSWORD", "example")
    config_file(CLIENT + """
        [[processors]]
        id = "bp"
        kind = "bridgepay"
        base_url = "https://${TEST_BP_PASSWORD}.test/api"
        username = "u"
        password = "p"
        merchant_code = "m"
        merchant_account_code = "a"
    """)
    assert load_settings().processor("bp").base_url == "https://example.test/api"


def test_secrets_are_hidden_when_the_settings_are_printed(config_file, full_env):
    config_file(FULL)
    text = repr(load_settings())
    for secret in ("sk_live_from_the_environment", "whsec_second_from_env", "bp-password-from-env",
                   "sk_test_billing_0123456789"):
        assert secret not in text


def test_unset_environment_reference_raises_config_error_naming_the_field(config_file, monkeypatch):
    monkeypatch.setenv("TEST_STRIPE_WHSEC", "whsec_second_from_env")
    monkeypatch.setenv("TEST_BP_PASSWORD", "pw")
    config_file(FULL)
    message = config_error()
    assert "processors.1.api_key" in message
    assert "TEST_STRIPE_KEY" in message


def test_unset_environment_reference_in_a_list_names_the_list_item(config_file, monkeypatch):
    monkeypatch.setenv("TEST_STRIPE_KEY", "sk_live_x")
    monkeypatch.setenv("TEST_BP_PASSWORD", "pw")
    config_file(FULL)
    message = config_error()
    assert "processors.1.webhook_secrets.1" in message
    assert "TEST_STRIPE_WHSEC" in message


def test_port_from_the_environment_overrides_the_file(config_file, full_env, monkeypatch):
    config_file(FULL)
    monkeypatch.setenv("GATEWAY_PORT", "9191")
    assert load_settings().port == 9191


def test_explicit_override_wins_over_environment_and_file(config_file, full_env, monkeypatch):
    config_file(FULL)
    monkeypatch.setenv("GATEWAY_PORT", "9191")
    assert load_settings(port=7070).port == 7070


def test_without_a_config_file_the_defaults_apply():
    s = load_settings()
    assert (s.host, s.port, s.processors, s.clients) == ("127.0.0.1", 8080, [], [])


def test_processor_lookup_by_id_returns_none_for_an_unknown_id(config_file, full_env):
    config_file(FULL)
    s = load_settings()
    assert s.processor("mock").kind == "mock"
    assert s.processor("paypal") is None


def test_settings_are_frozen(config_file, full_env):
    config_file(FULL)
    s = load_settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]


# --- bad configurations -------------------------------------------------------------------------

@pytest.mark.parametrize(("toml", "field"), [
    pytest.param('[[processors]]\nid = "pp"\nkind = "paypal"\n', "processors.0", id="unknown kind"),
    pytest.param('[[processors]]\nid = "s"\nkind = "stripe"\n', "processors.0.stripe.api_key",
                 id="stripe without api_key"),
    pytest.param('[[clients]]\nid = "c"\napi_key = "sk_test_0123456789abc"\nscopes = ["refunds:delete"]\n',
                 "clients.0.scopes.0", id="unknown scope"),
    pytest.param('[[clients]]\nid = "c"\napi_key = "sk_test_0123456789abc"\nscopes = []\n',
                 "clients.0.scopes", id="no scopes"),
    pytest.param('[[processors]]\nid = "m"\nkind = "mock"\n[[processors]]\nid = "m"\nkind = "mock"\n',
                 "processors.1.id", id="duplicate processor id"),
    pytest.param('[[processors]]\nid = "m"\nkind = "mock"\ncolour = "red"\n', "processors.0.mock.colour",
                 id="unknown processor field"),
    pytest.param('colour = "red"\n', "colour", id="unknown top-level field"),
    pytest.param('[[clients]]\nid = "c"\napi_key = "sk_short"\nscopes = ["admin"]\n', "clients.0.api_key",
                 id="too-short api_key"),
    pytest.param('[[processors]]\nid = "Not An Id"\nkind = "mock"\n', "processors.0.mock.id",
                 id="bad processor id"),
    pytest.param('port = "eighty"\n', "port", id="port not a number"),
    pytest.param('[[processors]]\nid = "bp"\nkind = "bridgepay"\nbase_url = "https://x"\nusername = "u"\n'
                 'password = "p"\nmerchant_code = "m"\n', "processors.0.bridgepay.merchant_account_code",
                 id="bridgepay missing merchant_account_code"),
])
def test_bad_config_raises_config_error_naming_the_failing_field(config_file, toml, field):
    config_file(toml)
    message = config_error()
    assert f"{field}:" in message


def test_duplicate_client_id_names_the_clients_field(config_file):
    config_file(CLIENT + CLIENT.replace("sk_test_billing_0123456789", "sk_test_billing_9876543210"))
    assert "clients.1.id" in config_error()


def test_two_clients_sharing_an_api_key_are_rejected(config_file):
    config_file(CLIENT + CLIENT.replace('id = "billing"', 'id = "other"'))
    assert "share an API key" in config_error()


def test_rejected_api_key_is_not_echoed_in_the_error(config_file):
    config_file('[[clients]]\nid = "c"\napi_key = "sk_short"\nscopes = ["admin"]\n')
    assert "sk_short" not in config_error()


def test_invalid_toml_raises_config_error_naming_gateway_config(config_file):
    path = config_file('[[processors]\nid = "x"\n')
    message = config_error()
    assert "GATEWAY_CONFIG" in message and str(path) in message and "not valid TOML" in message


def test_missing_config_file_raises_config_error_naming_gateway_config(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "nowhere.toml"))
    message = config_error()
    assert "GATEWAY_CONFIG" in message and "nowhere.toml" in message


def test_bad_environment_value_raises_config_error_naming_the_field(monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "not-a-port")
    assert "GATEWAY_PORT (port): " in config_error()  # the variable to fix, and the setting it feeds


def test_a_gateway_variable_no_setting_reads_is_named():
    environ = {"GATEWAY_PORT": "1", "GATEWAY_CONFIG": "x", "GATEWAY_LOG_LEVELL": "debug", "PATH": "/bin"}
    assert unknown_variables(environ) == ["GATEWAY_LOG_LEVELL"]


def test_a_configuration_without_a_processor_or_a_client_says_what_to_add():
    assert [p.split(":")[0] for p in missing_parts(Settings())] == ["processors", "clients"]


def test_settings_built_directly_reject_unknown_fields():
    with pytest.raises(ValidationError, match="colour"):
        Settings(colour="red")


# --- the command line ---------------------------------------------------------------------------

def test_migrate_with_a_bad_config_exits_2_naming_the_field_without_starting_a_database(
        config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an embedded Postgres would create .gateway-data here
    config_file('[[processors]]\nid = "pp"\nkind = "paypal"\n')
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "processors.0" in err and "paypal" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml"]


def test_migrate_with_an_unset_environment_reference_exits_2_naming_the_field(
        config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config_file(FULL)
    assert main(["migrate"]) == 2
    assert "processors.1.api_key" in capsys.readouterr().err


# --- the lease and the longest run it covers -------------------------------------------------------

BRIDGEPAY = {"id": "bridgepay", "kind": "bridgepay", "base_url": "http://127.0.0.1:1", "username": "u",
             "password": "p", "merchant_code": "1", "merchant_account_code": "2", "timeout_seconds": 5}


def test_a_lease_shorter_than_the_longest_run_is_refused_naming_the_processor():
    # 3 s cannot cover 4 s of in-run retries and two 5 s calls: a janitor would take a live call over.
    with pytest.raises(ValidationError) as info:
        Settings(lease_seconds=3, processors=[BRIDGEPAY])
    message = str(info.value)
    assert "lease_seconds" in message and "'bridgepay'" in message and "15 s" in message


def test_a_lease_longer_than_the_longest_run_is_accepted():
    settings = Settings(lease_seconds=15.5, processors=[BRIDGEPAY])  # 4 + 2 x 5 + 1 = 15 s
    assert settings.longest_run_seconds(settings.processors[0]) == 15.0


def test_the_execution_window_defaults_to_five_minutes_and_to_nothing_for_the_in_process_mock():
    settings = Settings(processors=[BRIDGEPAY, {"id": "mock", "kind": "mock"}])
    assert [p.execution_window_seconds for p in settings.processors] == [300.0, 0.0]
