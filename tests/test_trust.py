"""Trust rules as a table of bad inputs: each refused with its own error, nothing recorded."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from agent.errors import (
    ExpiredError,
    RollbackError,
    SignatureError,
    TooLargeError,
    TrustError,
    WrongNetworkError,
)
from agent.statefile import VersionStore
from agent.trust.envelope import seal
from agent.trust.keys import SigningKey
from agent.trust.root import new_root
from agent.trust.rules import (
    trust_initial_root,
    verify_envelope,
    verify_root_chain,
    verify_root_update,
)
from agent.trust.signed import SignedDocument, now_utc, sign_document

YAML = b"schema: 1\nnetwork:\n  name: home\n"


@pytest.fixture(scope="module")
def keys() -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(3)]


@pytest.fixture(scope="module")
def root(keys):
    return new_root("home", keys, 2, now_utc() + timedelta(days=1))


def envelope(root, keys, version=1, payload=YAML, ttl=timedelta(days=1), now=None) -> bytes:
    return seal(payload, root.network_id, version, keys, ttl, now).to_bytes()


def test_valid_envelope_verifies_and_returns_exact_payload(root, keys):
    env = verify_envelope(envelope(root, keys[:2]), root, 0, now_utc())
    assert env.payload == YAML and env.version == 1


def tamper(data: bytes, fn) -> bytes:
    obj = json.loads(data)
    fn(obj)
    return json.dumps(obj).encode()


def test_forged_signature_refused(root, keys):
    data = envelope(root, keys[:2])
    forged = tamper(data, lambda o: [s.update(sig="00" * 64) for s in o["signatures"]])
    with pytest.raises(SignatureError, match="0 valid root signature"):
        verify_envelope(forged, root, 0, now_utc())


def test_signature_by_unknown_key_refused(root, keys):
    strangers = [SigningKey.generate(), SigningKey.generate()]
    with pytest.raises(SignatureError):
        verify_envelope(envelope(root, strangers), root, 0, now_utc())


@pytest.mark.parametrize("offset", [10, 200, -40])
def test_one_flipped_byte_refused(root, keys, offset):
    data = bytearray(envelope(root, keys[:2]))
    data[offset % len(data)] ^= 0x01
    with pytest.raises(TrustError):
        verify_envelope(bytes(data), root, 0, now_utc())


def test_flipped_payload_bit_fails_hash_or_signature(root, keys):
    data = envelope(root, keys[:2])
    obj = json.loads(data)
    payload = obj["signed"]["payload"]
    obj["signed"]["payload"] = ("B" if payload[0] != "B" else "C") + payload[1:]
    with pytest.raises(TrustError):
        verify_envelope(json.dumps(obj).encode(), root, 0, now_utc())


def test_other_network_refused(root, keys):
    other = new_root("home", keys, 2, now_utc() + timedelta(days=1),
                     network_id="f" * 32)
    with pytest.raises(WrongNetworkError, match="envelope is for network"):
        verify_envelope(envelope(other, keys[:2]), root, 0, now_utc())


def test_same_name_networks_get_different_ids():
    a = new_root("home", [SigningKey.generate()], 1, now_utc())
    b = new_root("home", [SigningKey.generate()], 1, now_utc())
    assert a.network_id != b.network_id


@pytest.mark.parametrize("held", [5, 6])
def test_equal_or_lower_version_refused(root, keys, held):
    with pytest.raises(RollbackError, match="not newer"):
        verify_envelope(envelope(root, keys[:2], version=5), root, held, now_utc())


def test_expired_refused(root, keys):
    old = now_utc() - timedelta(days=3)
    with pytest.raises(ExpiredError, match="expired"):
        verify_envelope(envelope(root, keys[:2], ttl=timedelta(days=1), now=old), root, 0,
                        now_utc())


@pytest.mark.parametrize("hours", [-10, 10])
def test_clock_hours_off(root, keys, hours):
    """Issue 12 clock skew: a node whose clock is hours off. Behind: a fresh envelope is
    still valid (no not-before check). Ahead past the expiry: refused with a message
    naming the expiry and the node's clock, so the operator sees which is wrong."""
    data = envelope(root, keys[:2], ttl=timedelta(hours=5))
    skewed = now_utc() + timedelta(hours=hours)
    if hours < 0:
        assert verify_envelope(data, root, 0, skewed).version == 1
        return
    with pytest.raises(ExpiredError) as e:
        verify_envelope(data, root, 0, skewed)
    assert "expired at" in str(e.value)
    assert f"clock says {skewed:%Y-%m-%d %H:%M}" in str(e.value)


def test_duplicate_key_ids_do_not_reach_threshold(root, keys):
    data = envelope(root, keys[:1])
    dup = tamper(data, lambda o: o["signatures"].append(dict(o["signatures"][0])))
    with pytest.raises(SignatureError, match="1 valid root signature"):
        verify_envelope(dup, root, 0, now_utc())


def test_oversized_envelope_refused_before_parsing(root):
    with pytest.raises(TooLargeError):
        verify_envelope(b"{" + b" " * (2 << 20), root, 0, now_utc())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"signed": 1}',
                                  b'{"signed": {}, "signatures": [{"keyid": 1}]}'])
def test_truncated_or_malformed_refused(root, data):
    with pytest.raises(TrustError):
        verify_envelope(data, root, 0, now_utc())


def test_truncated_envelope_refused(root, keys):
    data = envelope(root, keys[:2])
    with pytest.raises(TrustError):
        verify_envelope(data[: len(data) // 2], root, 0, now_utc())


def test_unknown_fields_survive_round_trip(root, keys):
    doc = SignedDocument.from_bytes(envelope(root, keys[:2]), "e", 1 << 20)
    from agent.trust.envelope import Envelope

    d = dict(doc.signed, future_field={"x": 1})
    assert Envelope.from_dict(d).to_dict() == d


def test_replay_refused_after_restart(tmp_path, root, keys):
    v1, v2 = envelope(root, keys[:2], 1), envelope(root, keys[:2], 2)
    store = VersionStore(tmp_path)
    for data in (v1, v2):
        env = verify_envelope(data, root, store.version(), now_utc())
        store.record(env.version, data)
    restarted = VersionStore(tmp_path)  # a fresh object reads only the disk
    assert restarted.version() == 2
    with pytest.raises(RollbackError):
        verify_envelope(v1, root, restarted.version(), now_utc())
    assert restarted.envelope() == v2


def test_root_rotation_needs_old_and_new_threshold(keys):
    v1 = new_root("home", keys[:1], 1, now_utc() + timedelta(days=1))
    v1_doc = sign_document(v1.to_dict(), keys[:1]).to_bytes()
    new_keys = [SigningKey.generate(), SigningKey.generate()]
    v2 = new_root("home", new_keys, 2, now_utc() + timedelta(days=1), version=2,
                  network_id=v1.network_id)
    good = sign_document(v2.to_dict(), keys[:1] + new_keys).to_bytes()
    assert verify_root_chain(v1_doc, [good], now_utc()).version == 2
    only_new = sign_document(v2.to_dict(), new_keys).to_bytes()
    with pytest.raises(SignatureError, match="by v1 keys"):
        verify_root_update(trust_initial_root(v1_doc, now_utc()), only_new, now_utc())
    only_old = sign_document(v2.to_dict(), keys[:1] + new_keys[:1]).to_bytes()
    with pytest.raises(SignatureError, match="by its own keys"):
        verify_root_update(v1, only_old, now_utc())


def test_root_version_must_follow(keys):
    v1 = new_root("home", keys[:1], 1, now_utc() + timedelta(days=1))
    v3 = new_root("home", keys[:1], 1, now_utc() + timedelta(days=1), version=3,
                  network_id=v1.network_id)
    with pytest.raises(RollbackError):
        verify_root_update(v1, sign_document(v3.to_dict(), keys[:1]).to_bytes(), now_utc())


def test_anchor_with_forged_network_id_refused(keys):
    v1 = new_root("home", keys[:1], 1, now_utc() + timedelta(days=1), network_id="a" * 32)
    with pytest.raises(WrongNetworkError):
        trust_initial_root(sign_document(v1.to_dict(), keys[:1]).to_bytes(), now_utc())
