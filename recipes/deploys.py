"""The four deploys: base, agent, k3s, containers.

Each takes its params (recipes/params.py) and nothing else. The same functions run on a
live node (`@local`, from the agent's reconcile) and against a root filesystem being built
(`@chroot/DIR`, from image/): there, units are enabled but not started (recipes/units.py).
A deploy given None unloads its component (stops and disables what it installed).
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FindFiles
from pyinfra.operations import apt, files, server

from configs import TEMPLATES
from recipes import artifact, podman, units
from recipes.names import name_path, safe_name
from recipes.params import (
    PODMAN_PACKAGES,
    AgentParams,
    BaseParams,
    BootParams,
    ContainersParams,
    K3sParams,
    VmRuntimeParams,
)
from recipes.venv import installed, wheelhouse_digest

K3S_MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
K3S_IMAGES = "/var/lib/rancher/k3s/agent/images"
K3S_BINARY = "/usr/local/bin/k3s"


# Every file gets an explicit mode: pyinfra uploads land 0600, and daemons that drop
# privileges (networkd reads .network files as its own user) must read them.


def _tpl(name: str) -> str:
    return str(TEMPLATES / name)


@deploy("base")
def base(p: BaseParams) -> None:
    files.put(mode="644", name="Hostname", src=StringIO(safe_name(p.hostname) + "\n"),
              dest="/etc/hostname")
    files.template(mode="644", name="/etc/hosts", src=_tpl("hosts.j2"), dest="/etc/hosts",
                   hostname=p.hostname)
    for u in p.users:
        server.user(name=f"User {u.name}", user=safe_name(u.name, user=True), shell="/bin/bash",
                    create_home=True, groups=["sudo"] if u.sudo else None,
                    public_keys=list(u.ssh_keys) or None, delete_keys=True)
        sudoers = name_path("/etc/sudoers.d", u.name, prefix="mycelium-", user=True)
        if u.sudo:
            files.put(name=f"Sudo for {u.name}", dest=sudoers, mode="440",
                      src=StringIO(f"{u.name} ALL=(ALL) NOPASSWD:ALL\n"))
        else:
            files.file(name=f"No sudo for {u.name}", path=sudoers, present=False)
    sshd = files.template(name="sshd hardening", src=_tpl("sshd.conf.j2"),
                          dest="/etc/ssh/sshd_config.d/mycelium.conf", mode="644",
                          users=p.users)
    # Host keys are never baked into an image: ssh makes missing ones before it starts.
    keygen = files.put(mode="644", name="ssh host keys at first start",
                       src=StringIO("[Service]\nExecStartPre=\n"
                                    "ExecStartPre=/usr/bin/ssh-keygen -A\n"
                                    "ExecStartPre=/usr/sbin/sshd -t\n"),
                       dest="/etc/systemd/system/ssh.service.d/mycelium-hostkeys.conf",
                       create_remote_dir=True)
    units.service(name="ssh", unit="ssh.service", restarted=sshd.will_change,
                  daemon_reload=keygen.will_change)
    sysctl = files.template(mode="644", name="sysctl", src=_tpl("sysctl.conf.j2"),
                            dest="/etc/sysctl.d/90-mycelium.conf")
    units.service(name="apply sysctl", unit="systemd-sysctl.service",
                  restarted=sysctl.will_change)
    journald = files.template(mode="644", name="journald limits", src=_tpl("journald.conf.j2"),
                              dest="/etc/systemd/journald.conf.d/mycelium.conf",
                              create_remote_dir=True, journal_max_mb=p.journal_max_mb)
    units.service(name="journald", unit="systemd-journald.service",
                  restarted=journald.will_change)
    ntp = files.template(mode="644", name="time sync", src=_tpl("timesyncd.conf.j2"),
                         dest="/etc/systemd/timesyncd.conf.d/mycelium.conf",
                         create_remote_dir=True, ntp_servers=p.ntp_servers)
    units.service(name="timesyncd", unit="systemd-timesyncd.service",
                  restarted=ntp.will_change)
    files.template(mode="644", name="wired network", src=_tpl("wired.network.j2"),
                   dest="/etc/systemd/network/20-wired.network")
    units.service(name="networkd", unit="systemd-networkd.service")
    units.service(name="resolved", unit="systemd-resolved.service")


@deploy("agent")
def agent(p: AgentParams, source_wheelhouse: str = "") -> None:
    """`source_wheelhouse` (a directory on the controller) is copied to p.wheelhouse first;
    the image builder uses it, a live node already has its wheels."""
    files.directory(name="Agent data dir", path=p.data_dir, mode="700")
    files.directory(name="/etc/mycelium", path="/etc/mycelium", mode="755")
    digest = ""
    if source_wheelhouse:
        digest = wheelhouse_digest(Path(source_wheelhouse))
        for whl in sorted(Path(source_wheelhouse).glob("*.whl")):
            files.put(mode="644", name=f"wheel {whl.name}", src=str(whl),
                      dest=f"{p.wheelhouse}/{whl.name}", create_remote_dir=True)
    install = installed(name="Agent virtual environment", venv=p.venv,
                        wheelhouse=p.wheelhouse, digest=digest)
    # `mycelium` in a root shell on the node (release status, tui --local): the release
    # the unit runs, through `current` (agent/node/selfupdate.py)
    root = p.venv.rsplit("/", 1)[0]
    files.link(name="mycelium command", path="/usr/local/bin/mycelium",
               target=f"{root}/current/bin/mycelium")
    unit = files.template(mode="644", name="Agent unit", src=_tpl("mycelium-agent.service.j2"),
                          dest="/etc/systemd/system/mycelium-agent.service",
                          venv=p.venv, data_dir=p.data_dir, listen=p.listen)
    units.service(name="Agent service", unit="mycelium-agent.service", running=p.running,
                  restarted=unit.will_change or install.will_change,
                  daemon_reload=unit.will_change)
    # self-update's watchdog for an agent that hangs after a release switch (the unit's
    # ExecStartPre catches one that fails to start)
    timer = [files.template(mode="644", name=f"Release watchdog {kind}",
                            src=_tpl(f"mycelium-release-watchdog.{kind}.j2"),
                            dest=f"/etc/systemd/system/mycelium-release-watchdog.{kind}",
                            venv=p.venv, data_dir=p.data_dir) for kind in ("service", "timer")]
    units.service(name="Release watchdog timer", unit="mycelium-release-watchdog.timer",
                  running=p.running, daemon_reload=any(t.will_change for t in timer))


@deploy("k3s")
def k3s(p: K3sParams | None) -> None:
    if p is None:
        for u in ("k3s.service", "k3s-agent.service"):
            units.service(name=f"{u} unloaded", unit=u, enabled=False, running=False)
        return
    binary = artifact.fetched(name="K3s binary", src=p.binary, dest=K3S_BINARY,
                              sha256=p.binary_sha256, mode="755")
    if p.images:
        suffix = "".join(Path(p.images.split("?")[0]).suffixes) or ".tar"
        artifact.fetched(name="K3s airgap images", src=p.images, sha256=p.images_sha256,
                         dest=f"{K3S_IMAGES}/k3s-airgap-images{suffix}")
    cfg = files.template(name="K3s config", src=_tpl("k3s-config.yaml.j2"),
                         dest="/etc/rancher/k3s/config.yaml", mode="600",
                         create_remote_dir=True, role=p.role, token=p.token,
                         server_url=p.server_url, node_name=p.node_name)
    unit_name = "k3s.service" if p.role == "server" else "k3s-agent.service"
    other = "k3s-agent.service" if p.role == "server" else "k3s.service"
    units.service(name=f"{other} unloaded", unit=other, enabled=False, running=False)
    unit = files.template(mode="644", name="K3s unit", src=_tpl("k3s.service.j2"), role=p.role,
                          dest=f"/etc/systemd/system/{unit_name}")
    if p.role == "server":
        keep = {f"mycelium-{n}.yaml" for n in p.manifests}
        for name, text in sorted(p.manifests.items()):
            files.put(mode="644", name=f"Manifest {name}", src=StringIO(text),
                      create_remote_dir=True,
                      dest=name_path(K3S_MANIFESTS, name, ".yaml", prefix="mycelium-"))
        for path in host.get_fact(FindFiles, path=K3S_MANIFESTS, fname="mycelium-*.yaml"):
            if Path(path).name not in keep:
                files.file(name=f"Remove manifest {Path(path).name}", path=path,
                           present=False)
    units.service(name="K3s service", unit=unit_name, daemon_reload=unit.will_change,
                  restarted=cfg.will_change or binary.will_change)


@deploy("containers")
def containers(p: ContainersParams | None) -> None:
    wanted = p.manifests if p else {}
    if wanted:
        _packages("podman", PODMAN_PACKAGES)
    for name, text in sorted(wanted.items()):
        podman.kube(name=f"Service {name}", svc=name, manifest=text)
    for path in host.get_fact(FindFiles, path=podman.KUBE_DIR, fname="*.yaml"):
        name = Path(path).stem
        if name not in wanted:
            podman.kube(name=f"Remove service {name}", svc=name, present=False)


@deploy("vm runtime")
def vm_runtime(p: VmRuntimeParams | None) -> None:
    """QEMU for the endophytes placed here (the agent runs them). Left installed when none
    is placed any more, like podman: the agent stops the VMs, the packages cost only disk."""
    if p is not None:
        _packages("QEMU", p.packages)


def _packages(name: str, packages: tuple[str, ...]) -> None:
    """Install `packages` unless all are there: then not even `apt-get update` runs, so a
    node whose image has them baked in (`build.py --preinstall`) needs no network."""
    have = host.get_fact(DebPackages)
    if all(p in have for p in packages):
        return
    apt.packages(name=name, packages=list(packages), update=True, cache_time=86400)


@deploy("k3s binary")
def k3s_binary(src: str, sha256: str) -> None:
    """Only for images: the binary where the k3s deploy puts it (same operation), so a node
    whose state names the same SHA-256 finds it in place and does not download it."""
    artifact.fetched(name="K3s binary", src=src, dest=K3S_BINARY, sha256=sha256, mode="755")


@deploy("image boot")
def image_boot(p: BootParams) -> None:
    """Only for images: mounts by label, and the one-shot first-boot service."""
    files.template(mode="644", name="fstab", src=_tpl("fstab.j2"), dest="/etc/fstab",
                   boot_label=p.boot_label, boot_mount=p.boot_mount)
    files.directory(name="boot partition mount point", path=p.boot_mount)
    files.template(name="first-boot script", src=_tpl("mycelium-firstboot.sh.j2"),
                   dest="/usr/local/sbin/mycelium-firstboot", mode="755",
                   boot_mount=p.boot_mount, data_dir=p.data_dir, port=p.port)
    files.template(mode="644", name="first-boot unit", src=_tpl("mycelium-firstboot.service.j2"),
                   dest="/etc/systemd/system/mycelium-firstboot.service",
                   boot_mount=p.boot_mount, data_dir=p.data_dir)
    units.service(name="first-boot service", unit="mycelium-firstboot.service",
                  running=False)
    if not p.consoles:
        return
    files.template(mode="644", name="console dashboard unit",
                   src=_tpl("mycelium-console@.service.j2"),
                   dest="/etc/systemd/system/mycelium-console@.service",
                   venv=p.venv, data_dir=p.data_dir)
    for tty in p.consoles:
        # the dashboard replaces the login prompt there (the getty would take the tty back)
        getty = "serial-getty" if tty.startswith("tty") and not tty[3:].isdigit() else "getty"
        files.link(name=f"no {getty} on {tty}", path=f"/etc/systemd/system/{getty}@{tty}.service",
                   target="/dev/null")
        units.service(name=f"console dashboard on {tty}", unit=f"mycelium-console@{tty}.service",
                      running=False)
