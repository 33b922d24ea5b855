"""What only a node runs: daemon, API, backbone duties, reconcile, enrolment, data dir."""
