from __future__ import annotations

from datetime import timedelta

import pytest

from agent.errors import SignatureError, TokenError
from agent.keys import SigningKey
from agent.root import new_root
from agent.signed import now_utc
from agent.tokens import create_token, verify_token


@pytest.fixture(scope="module")
def setup():
    root_key, admin_key = SigningKey.generate(), SigningKey.generate()
    root = new_root("home", [root_key], 1, now_utc() + timedelta(days=1), [admin_key])
    return root, root_key, admin_key


def test_token_round_trip_by_root_and_admin(setup):
    root, root_key, admin_key = setup
    for k in (root_key, admin_key):
        tok = verify_token(create_token(root, [k], "rhizomorph", timedelta(hours=1)), root,
                           now_utc(), role="rhizomorph")
        assert tok.network_id == root.network_id and tok.role == "rhizomorph"


def test_expired_token_refused(setup):
    root, root_key, _ = setup
    t = create_token(root, [root_key], "rhizomorph", timedelta(hours=1),
                     now=now_utc() - timedelta(hours=2))
    with pytest.raises(TokenError, match="expired"):
        verify_token(t, root, now_utc())


def test_wrong_network_token_refused(setup):
    root, root_key, _ = setup
    other = new_root("home", [root_key], 1, now_utc() + timedelta(days=1),
                     network_id="0" * 32)
    with pytest.raises(TokenError, match="for network"):
        verify_token(create_token(other, [root_key], "rhizomorph", timedelta(hours=1)), root,
                     now_utc())


def test_wrong_role_and_name_refused(setup):
    root, root_key, _ = setup
    t = create_token(root, [root_key], "rhizomorph", timedelta(hours=1), node_name="n1")
    with pytest.raises(TokenError, match="role"):
        verify_token(t, root, now_utc(), role="sclerotium")
    with pytest.raises(TokenError, match="node 'n1'"):
        verify_token(t, root, now_utc(), node_name="n2")


def test_token_by_stranger_refused(setup):
    root, _, _ = setup
    with pytest.raises(SignatureError):
        verify_token(create_token(root, [SigningKey.generate()], "hypha", timedelta(hours=1)),
                     root, now_utc())


@pytest.mark.parametrize("bad", ["", "myc1.", "myc1.!!!!", "myc2.abc", "myc1." + "A" * 9000])
def test_garbage_token_refused(setup, bad):
    with pytest.raises(TokenError):
        verify_token(bad, setup[0], now_utc())
