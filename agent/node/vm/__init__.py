"""Endophytes as VMs on this node: the QEMU supervisor and what it is built from.

Pure rules apart from I/O:
  spec      what one VM is (from network.yaml) and the QEMU command line for it
  policy    the supervisor's state machine and restart backoff (no clock, no processes),
            and what an old primary does with a guest paused for a planned move
  qmp       a small asyncio client of QEMU's QMP (JSON lines over a unix socket)
  images    base images: fetched once, SHA-256 checked, shared; per-VM qcow2 overlays
  accel     KVM only when a probe guest actually runs with it, else TCG
  supervisor  one VM: start, watch, restart with backoff, stop cleanly
  runtime   all VMs placed here: started and stopped from the placement, status per VM
  console   the serial console between a unix socket and the API's WebSocket
"""
