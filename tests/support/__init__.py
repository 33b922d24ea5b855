"""Shared test machinery, imported by test and bench modules (which never import each other).

agents        real agent processes on loopback, driven over their API
primary       Primary spore rigs: in-process stores and sclerotia as separate processes
primary_node  the process one such sclerotium runs (a script, started by primary.py)
boot          QEMU boot tests: a network with an SSH user, SSH into a guest
rootfs        the cached Debian root filesystem the recipe and image tests share
pi_image      Raspberry Pi images, read back with mtools
faultproxy    a TCP proxy that delays, drops, duplicates and corrupts traffic
vclock        a virtual-time asyncio loop for gossip simulations
tinyvm        a tiny VM (host kernel + busybox initramfs) for endophyte tests, cached
recipe_harness  recipe operations and facts run against the JSON cases in tests/recipe_cases/

Fixtures shared by several test modules live in tests/conftest.py.
"""
