"""The operator's side: the network directory, init/rotate/sign, the first node."""
