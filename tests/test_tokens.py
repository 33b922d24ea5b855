from __future__ import annotations

from datetime import timedelta

import pytest

from agent.errors import SignatureError, TokenError
from agent.trust.keys import SigningKey
from agent.trust.root import new_root
from agent.trust.signed import now_utc
from agent.trust.tokens import create_token, verify_token


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


def test_token_is_single_use_by_default_and_carries_a_signed_id(setup):
    root, root_key, _ = setup
    one = verify_token(create_token(root, [root_key], "rhizomorph", timedelta(hours=1)), root,
                       now_utc())
    two = verify_token(create_token(root, [root_key], "rhizomorph", timedelta(hours=1),
                                    uses=2), root, now_utc())
    assert one.uses == 1 and two.uses == 2
    assert one.id and two.id and one.id != two.id and len(one.id) >= 32


@pytest.mark.parametrize("uses", [0, -1])
def test_token_needs_at_least_one_use(setup, uses):
    root, root_key, _ = setup
    with pytest.raises(TokenError, match="uses"):
        create_token(root, [root_key], "rhizomorph", timedelta(hours=1), uses=uses)


@pytest.mark.parametrize("field", [None, 0])
def test_old_tokens_without_uses_count_as_single_use(setup, field):
    """A token signed before `uses` existed (or with 0) admits one node."""
    import base64

    from agent.trust.encoding import canonical
    from agent.trust.signed import format_time, sign_document
    from agent.trust.tokens import PREFIX, TOKEN_TYPE

    root, root_key, _ = setup
    signed = {"_type": TOKEN_TYPE, "network_id": root.network_id, "role": "rhizomorph",
              "expires": format_time(now_utc() + timedelta(hours=1)), "nonce": "ab" * 8}
    if field is not None:
        signed["uses"] = field
    doc = sign_document(signed, [root_key])
    old = PREFIX + base64.urlsafe_b64encode(canonical(doc.to_dict())).decode().rstrip("=")
    tok = verify_token(old, root, now_utc())
    assert tok.uses == 1 and tok.id == "ab" * 8


def test_token_uses_are_signed(setup):
    """Raising `uses` in a token breaks its signature."""
    import base64
    import json

    from agent.trust.tokens import PREFIX

    root, root_key, _ = setup
    t = create_token(root, [root_key], "rhizomorph", timedelta(hours=1))
    body = t[len(PREFIX):]
    d = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    d["signed"]["uses"] = 100
    forged = PREFIX + base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    with pytest.raises(SignatureError):
        verify_token(forged, root, now_utc())
