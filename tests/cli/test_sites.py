"""`blogstream sites ...` against the real test database: the Wix key never as a required argument,
--json for the list, one-line errors for what is not registered."""
from __future__ import annotations

import json

import pytest

from streams.cli import output

from .conftest import on_db, uid


def stored(site: str):
    return on_db(lambda db: db.get_site(site))


def test_add_reads_the_key_from_the_variable_named_by_wix_api_key_env(run):
    site = uid("site")
    result = run("sites", "add", site, "--wix-api-key-env", "SHOP_KEY", "--weight", "2", "--member-id", "m1",
                 env={"SHOP_KEY": "key-from-var"})
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"site {site} registered\n", "")
    s = stored(site)
    assert (s.wix_api_key, s.weight, s.wix_member_id, s.max_in_flight) == ("key-from-var", 2.0, "m1", 20)


def test_add_reads_blogstream_wix_api_key_by_default(run):
    site = uid("site")
    assert run("sites", "add", site, env={"BLOGSTREAM_WIX_API_KEY": "key-from-env"}).exit_code == 0
    assert stored(site).wix_api_key == "key-from-env"


def test_add_asks_with_a_hidden_prompt_on_a_terminal(run, monkeypatch):
    monkeypatch.setattr(output, "interactive", lambda: True)
    site = uid("site")
    result = run("sites", "add", site, input="typed-key\n", env={"BLOGSTREAM_WIX_API_KEY": ""})
    assert result.exit_code == 0 and "typed-key" not in result.output  # hidden: not echoed
    assert "Wix API key" in result.stderr
    assert stored(site).wix_api_key == "typed-key"


def test_add_without_a_key_and_without_a_terminal_says_how_to_give_one(run):
    result = run("sites", "add", uid("site"), env={"BLOGSTREAM_WIX_API_KEY": ""})
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("blogstream: error: no Wix API key given, set BLOGSTREAM_WIX_API_KEY, or pass "
                             "--wix-api-key-env VAR naming a variable that holds it\n")


def test_the_key_as_an_argument_still_works_with_a_warning(run):
    site = uid("site")
    result = run("sites", "add", site, "--wix-api-key", "key-in-history")
    assert result.exit_code == 0
    assert result.stderr.startswith("blogstream: warning: --wix-api-key puts the key in your shell history")
    assert stored(site).wix_api_key == "key-in-history"


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--wix-api-key-env", "NOPE_NOT_SET"], {}, "the environment variable NOPE_NOT_SET (--wix-api-key-env) is not set"),
    (["--wix-api-key-env", "V", "--wix-api-key", "k"], {"V": "x"}, "--wix-api-key-env and --wix-api-key both given"),
])
def test_key_options_that_cannot_work_are_refused(run, args, env, message):
    result = run("sites", "add", uid("site"), *args, env=env)
    assert result.exit_code == 2 and result.stderr.startswith(f"blogstream: error: {message}")


def test_list_json_has_every_control_and_never_the_key(run):
    site = uid("site")
    run("sites", "add", site, "--max-in-flight", "7", env={"BLOGSTREAM_WIX_API_KEY": "k-secret"})
    result = run("sites", "list", "--json")
    listed = {s["site_id"]: s for s in json.loads(result.stdout)}
    assert listed[site] == {"site_id": site, "name": site, "paused": False, "weight": 1.0, "max_in_flight": 7,
                            "max_queued": 1000, "max_queued_bulk": 10_000, "wix_member_id": None, "has_wix_api_key": True,
                            "monthly_budget_usd": None, "daily_budget_usd": None, "budget_exhausted": None}
    assert "k-secret" not in result.stdout
    text = run("sites", "list").stdout
    assert any(line.split()[:2] == [site, "active"] for line in text.splitlines())


def test_pause_resume_set_and_cancel(run):
    site = uid("site")
    run("sites", "add", site, env={"BLOGSTREAM_WIX_API_KEY": "k"})
    assert "paused=True" in run("sites", "pause", site).stdout and stored(site).paused
    assert "paused=False" in run("sites", "resume", site).stdout and not stored(site).paused
    result = run("sites", "set", site, "--weight", "3", "--max-queued", "50")
    assert result.exit_code == 0 and "wix_api_key='***'" in result.stdout
    assert (stored(site).weight, stored(site).max_queued) == (3.0, 50)
    assert run("sites", "cancel", site).stdout == f"cancelled 0 queued request(s) of site {site}\n"


@pytest.mark.parametrize("args", [["pause"], ["resume"], ["cancel"], ["set", "--weight", "2"]])
def test_an_unregistered_site_is_one_line(run, args):
    site = uid("ghost")
    result = run("sites", args[0], site, *args[1:])
    assert result.exit_code == 1
    assert result.stderr == f"blogstream: error: site {site} is not registered, register it first: blogstream sites add {site}\n"


def test_set_without_a_change_is_refused(run):
    result = run("sites", "set", uid("site"))
    assert result.exit_code == 2 and "nothing to change, give --weight, --max-in-flight, --max-queued" in result.stderr
