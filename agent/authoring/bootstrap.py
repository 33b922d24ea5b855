"""Preparing the first sclerotium from the operator's network directory.

The first node cannot enrol through anyone, so the operator issues its certificate
directly and hands it what every sclerotium holds: the CA key (to enrol joiners) and
the Raft secret. Root signing keys are never copied. The seed spore is re-signed to list
the node as a bootstrap address, so joiners know where to go.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from agent.authoring.netdir import NetworkDir
from agent.errors import ConfigError
from agent.node.datadir import NodeDir, NodeIdentity
from agent.node.enrol import split_addr
from agent.raft.membership import raft_addr
from agent.statefile import atomic_write
from agent.trust import pki
from agent.trust.names import check_node_name
from agent.trust.rules import MAX_ROOT_BYTES, parse_signed
from agent.trust.spore import SeedSpore, load_spore, new_spore, sign_spore_with_root


def bootstrap_first_node(net: NetworkDir, data_dir: Path, name: str,
                         listen: str) -> NodeIdentity:
    check_node_name(name)
    node = NodeDir(data_dir)
    if node.enrolled():
        raise ConfigError(f"{data_dir} already holds an enrolled node; use another --data-dir")
    host, _ = split_addr(listen)
    root = net.root()
    key = pki.new_private_key()
    cert = pki.issue_certificate(net.ca_key.read_bytes(), net.ca_crt.read_bytes(),
                                 pki.make_csr(key, name), node_name=name, role="sclerotium",
                                 network_id=root.network_id, addresses=[host])
    node.save_root_chain(net.root_chain())
    node.save_credentials(key, cert, net.ca_crt.read_bytes())
    node.save_sclerotium_secrets(net.ca_key.read_bytes(), secrets.token_hex(32).encode())
    # the network's first Raft member: a cluster of one until others join
    node.write_raft_members([raft_addr(listen)])
    ident = NodeIdentity(name, "sclerotium", root.network_id, listen)
    node.write_identity(ident)
    add_bootstrap_address(net, listen)
    return ident


def add_bootstrap_address(net: NetworkDir, addr: str) -> SeedSpore:
    root = net.root()
    keys = net.signing_keys(root)[: root.role("root").threshold]
    old = load_spore(net.spore_json.read_bytes())
    boot = list(old.bootstrap) + ([addr] if addr not in old.bootstrap else [])
    chain = [parse_signed(b, "root document", MAX_ROOT_BYTES).to_dict()
             for b in net.root_chain()]
    spore = new_spore(chain, root, old.version + 1, boot, old.envelope)
    atomic_write(net.spore_json, sign_spore_with_root(spore, keys).to_bytes())
    return spore
