"""Operator-side identity work: make a network, rotate its root keys, sign states.

Everything here writes into a network directory (agent/authoring/netdir.py) and is what the
`init`, `keys rotate`, `sign` and `token create` commands call. Root private keys live
only here, on the operator's machine; nodes get public files.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agent.authoring.netdir import NetworkDir
from agent.errors import ConfigError, SignatureError
from agent.statefile import atomic_write
from agent.trust import pki
from agent.trust.envelope import DEFAULT_TTL, seal
from agent.trust.keys import SigningKey
from agent.trust.root import Root, new_root
from agent.trust.signed import SignedDocument, now_utc, sign_document
from agent.trust.spore import new_spore, sign_spore_with_root
from configs import TEMPLATES

ROOT_TTL = timedelta(days=3650)
PRIVATE = 0o600


def init_network(path: Path, name: str, root_keys: int = 1, threshold: int = 1,
                 network_yaml: bytes | None = None) -> NetworkDir:
    """Create a new network directory; refuses to touch an existing one."""
    if not 1 <= threshold <= root_keys:
        raise ConfigError(f"--threshold {threshold} must be between 1 and --root-keys "
                          f"{root_keys}")
    net = NetworkDir(Path(path))
    if net.root_json.exists() or net.keys_dir.exists():
        raise ConfigError(f"{path} already holds a network; refusing to overwrite it "
                          "(pick another --dir)")
    if net.path.exists() and any(net.path.iterdir()):
        raise ConfigError(f"{path} exists and is not empty; pick another --dir")
    if network_yaml is None:
        network_yaml = render_network_yaml(name)
    net.path.mkdir(parents=True, exist_ok=True)
    net.keys_dir.mkdir(mode=0o700)
    net.root_history.mkdir()
    net.state_dir.mkdir()
    keys = [SigningKey.generate() for _ in range(root_keys)]
    for k in keys:
        net.save_key(k)
    root = new_root(name, keys, threshold, now_utc() + ROOT_TTL)
    ca_key, ca_crt = pki.create_ca(name, root.network_id)
    atomic_write(net.ca_key, ca_key, PRIVATE)
    atomic_write(net.ca_crt, ca_crt)
    # The root vouches for the CA: a joiner checks the CA it is shown against this hash,
    # so enrolment needs no trust on first use.
    root = replace(root, extra={"ca_sha256": pki.fingerprint(ca_crt)})
    root_doc = sign_document(root.to_dict(), keys)
    _write_root(net, root, root_doc)
    op_key = pki.new_private_key()
    csr = pki.make_csr(op_key, "operator")
    op_crt = pki.issue_certificate(ca_key, ca_crt, csr, node_name="operator", role="hypha",
                                   network_id=root.network_id, client_only=True)
    atomic_write(net.operator_key, op_key, PRIVATE)
    atomic_write(net.operator_crt, op_crt)

    spore = new_spore([root_doc.to_dict()], root, version=1)
    atomic_write(net.spore_json, sign_spore_with_root(spore, keys).to_bytes())
    atomic_write(net.network_yaml, network_yaml)
    return net


def _write_root(net: NetworkDir, root: Root, doc: SignedDocument) -> None:
    data = doc.to_bytes()
    atomic_write(net.root_history / f"{root.version}.root.json", data)
    atomic_write(net.root_json, data)


def rotate_root(net: NetworkDir, root_keys: int = 1, threshold: int = 1) -> Root:
    """Root N+1 with fresh keys, signed by a threshold of N's keys and of its own (TUF)."""
    old = net.root()
    old_keys = net.signing_keys(old)
    if len(old_keys) < old.role("root").threshold:
        raise SignatureError(f"only {len(old_keys)} of the {old.role('root').threshold} "
                             f"version-{old.version} root keys are in {net.keys_dir}")
    if not 1 <= threshold <= root_keys:
        raise ConfigError(f"--threshold {threshold} must be between 1 and --root-keys "
                          f"{root_keys}")
    keys = [SigningKey.generate() for _ in range(root_keys)]
    root = new_root(old.network_name, keys, threshold, now_utc() + ROOT_TTL,
                    version=old.version + 1, network_id=old.network_id)
    # Delegated admin keys carry over; only the root role changes hands.
    admin = old.role("admin").keyids
    roles = {**{n: r for n, r in old.roles.items() if n != "root"}, **root.roles}
    root = replace(root, extra=old.extra, roles=roles,
                   keys={**{k: v for k, v in old.keys.items() if k in admin}, **root.keys})
    doc = sign_document(root.to_dict(), old_keys[:old.role("root").threshold] + keys)
    for k in keys:
        net.save_key(k)
    _write_root(net, root, doc)
    retired = net.keys_dir / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    for k in old_keys:  # old keys can no longer sign anything the network accepts
        shutil.move(net.keys_dir / f"root-{k.keyid[:12]}.key", retired)
    net.root()  # re-verify the whole chain as a node would
    return root


def make_token(net: NetworkDir, role: str, ttl: timedelta, node_name: str | None = None,
               admin: bool = False, uses: int = 1) -> str:
    """A join token signed with the network's root keys (threshold) or one admin key,
    admitting `uses` nodes."""
    from agent.trust.tokens import create_token

    root = net.root()
    keys = net.signing_keys(root, "admin" if admin else "root")
    need = 1 if admin else root.role("root").threshold
    if len(keys) < need:
        raise ConfigError(f"need {need} {'admin' if admin else 'root'} key(s) in "
                          f"{net.keys_dir}, found {len(keys)}")
    return create_token(root, keys[:need], role, ttl, node_name, uses=uses)


def last_signed_version(net: NetworkDir) -> int:
    p = net.state_dir / "signed-version"
    return int(p.read_text()) if p.exists() else 0


def sign_state(net: NetworkDir, yaml_bytes: bytes, version: int | None = None,
               ttl: timedelta = DEFAULT_TTL) -> tuple[int, bytes]:
    """Seal exact YAML bytes with the next version; the version is recorded first so
    two envelopes never share a number, even after a crash."""
    root = net.root()
    keys = net.signing_keys(root)
    need = root.role("root").threshold
    if len(keys) < need:
        raise SignatureError(f"{len(keys)} of the {need} root keys needed are in "
                             f"{net.keys_dir}; collect the others to sign")
    last = last_signed_version(net)
    if version is None:
        version = last + 1
    elif version <= last:
        raise ConfigError(f"--version {version} must be above the last signed version {last}")
    net.state_dir.mkdir(exist_ok=True)
    atomic_write(net.state_dir / "signed-version", f"{version}\n".encode())
    doc = seal(yaml_bytes, root.network_id, version, keys[:need], ttl)
    return version, doc.to_bytes()


def render_network_yaml(network_name: str) -> bytes:
    """The commented network.yaml that `init` writes (configs/templates/network.yaml.j2)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      keep_trailing_newline=True)
    return env.get_template("network.yaml.j2").render(network_name=network_name).encode()
