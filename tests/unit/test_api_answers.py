"""api.headers and the other api.* options, and what the operator is told about the API's answers."""

import logging

import pytest
import yaml

from mqttbuffer.config.loader import ConfigError, load_config
from mqttbuffer.delivery.answers import ApiReport, api_message, refusal, safe_url
from mqttbuffer.delivery.apiheaders import request_headers, skipping_duplicates
from mqttbuffer.stats import API_STATES, SharedStats
from mqttbuffer.workers.forwarder import Answer


def write(tmp_path, api):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"api": {"url": "https://x.supabase.co/rest/v1/t", **api},
                                    "buffer": {"persist_file": str(tmp_path / "b.db")}}))
    return str(path)


def test_api_headers_add_to_and_replace_the_defaults_and_secret_ones_are_redacted(tmp_path):
    cfg = load_config(write(tmp_path, {"key": "anon-key-123", "headers": {
        "Prefer": "resolution=ignore-duplicates, return=minimal", "authorization": "Bearer service-jwt-456",
        "X-Device": "pikvm"}}))
    headers = request_headers(cfg.api.key, cfg.api.headers)
    assert headers["Prefer"] == "resolution=ignore-duplicates, return=minimal"
    assert headers["authorization"] == "Bearer service-jwt-456" and "Authorization" not in headers
    assert headers["apikey"] == "anon-key-123"
    dumped = cfg.to_dict()["api"]["headers"]
    assert dumped == {"Prefer": "resolution=ignore-duplicates, return=minimal", "authorization": "***",
                      "X-Device": "pikvm"}
    assert "service-jwt-456" in cfg.secrets()


@pytest.mark.parametrize("headers, problem", [
    ({"Bad Name": "x"}, "header names"),
    ({"Content-Length": "1"}, "set by mqttbuffer itself"),
    ({"X-A": "one\r\nX-B: two"}, "control characters"),
    ({"X-A": ["list"]}, "expected a string value"),
    ({"Prefer": "a", "prefer": "b"}, "given twice"),
    ("Prefer: x", "expected a mapping"),
])
def test_bad_api_headers_are_one_line_config_errors(tmp_path, headers, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(write(tmp_path, {"headers": headers}))
    assert err.value.key == "api.headers"


def test_api_fields_and_constants_are_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'topic'") as err:
        load_config(write(tmp_path, {"fields": {"topik": "t"}}))
    assert err.value.key == "api.fields"
    with pytest.raises(ConfigError, match="already a wire field") as err:
        load_config(write(tmp_path, {"constants": {"topic": "x"}}))
    cfg = load_config(write(tmp_path, {"fields": {"qos": None}, "constants": {"device": "pikvm-1"},
                                       "duplicate_is_delivered": False, "max_refused_backoff": 60}))
    assert cfg.api.fields == {"qos": None} and cfg.api.max_refused_backoff == 60.0
    assert cfg.api.duplicate_is_delivered is False


def test_refusals_name_status_url_without_secrets_and_the_fix():
    assert refusal(401, "https://x.supabase.co/rest/v1/t?apikey=s3cret") == \
        "401 Unauthorized from https://x.supabase.co/rest/v1/t: check api.key"
    assert "check api.url (table or function name)" in refusal(404, "http://127.0.0.1:8/rest/v1/nope")
    assert refusal(301, "http://a.example/t", "https://b.example/t?token=x") == \
        "301 Moved Permanently from http://a.example/t: api.url redirects to https://b.example/t: set api.url" \
        " to the final URL"
    assert "(Could not find the 'x' column)" in refusal(400, "http://a.example/t", body="Could not find the 'x' column")
    assert safe_url("http://[::1]:8080/p?q=1#f") == "http://[::1]:8080/p"


def test_the_operator_gets_one_error_when_refusing_starts_reminders_and_one_line_when_it_ends(caplog):
    stats, log = SharedStats(), logging.getLogger("test.report")
    report = ApiReport(stats, log, "https://x.supabase.co/rest/v1/t")
    refused = Answer(401, excerpt='{"message":"Invalid API key"}', problem="HTTP 401")
    with caplog.at_level(logging.INFO, logger="test.report"):
        report.update("refusing", refused, 2.0, 1000, now=0.0)
        for now in range(1, 600, 10):
            report.update("refusing", refused, 300.0, 1000, now=float(now))
        report.update("ok", Answer(201), 0.0, 0, now=700.0)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    errors = [m for level, m in lines if level == "ERROR"]
    assert errors[0].startswith("API refuses every request: 401 Unauthorized from https://x.supabase.co/rest/v1/t"
                                " (Invalid API key): check api.key; holding 1000 messages")
    assert len(errors) == 2 and "still refuses" in errors[1], "one reminder in the next ten minutes"
    assert lines[-1] == ("INFO", "API accepts messages again (it was refusing for 11m40s)")
    assert API_STATES[int(stats.get("api_state"))] == "ok" and stats.text("api_error") == ""


def test_status_facts_while_refusing():
    stats = SharedStats()
    report = ApiReport(stats, logging.getLogger("test.facts"), "http://127.0.0.1:9/rest/v1/t")
    report.update("refusing", Answer(404, problem="HTTP 404"), 2.0, 5, now=0.0)
    assert API_STATES[int(stats.get("api_state"))] == "refusing"
    assert stats.get("api_status") == 404 and stats.get("api_since") > 0
    assert stats.text("api_error") == "404 Not Found from http://127.0.0.1:9/rest/v1/t: check api.url (table or" \
        " function name)"
    report.update("unreachable", Answer(None, problem="connection refused"), 2.0, 5, now=1.0)
    assert stats.text("api_error") == "connection refused from http://127.0.0.1:9/rest/v1/t"


def test_a_resend_after_a_409_asks_postgrest_to_skip_rows_it_holds():
    assert skipping_duplicates({"apikey": "k"})["Prefer"] == "resolution=ignore-duplicates"
    assert skipping_duplicates({"prefer": "return=minimal"}) == \
        {"prefer": "return=minimal, resolution=ignore-duplicates"}
    assert skipping_duplicates({"Prefer": "resolution=merge-duplicates"}) == {"Prefer": "resolution=merge-duplicates"}


@pytest.mark.parametrize("body, status, said", [
    ('{"code":"42501","message":"new row violates row-level security policy for table \\"t\\""}', 401,
     'new row violates row-level security policy for table "t"'),
    ('{"code":"PGRST204","message":"Could not find the \'x\' column of \'t\' in the schema cache"}', 400,
     "Could not find the 'x' column of 't' in the schema cache"),
    ("<html><body>Not Found</body></html>", 404, ""),
    ("plain words", 400, "plain words"),
])
def test_the_refusal_line_quotes_what_the_api_said(body, status, said):
    assert api_message(body, status) == said
