"""Trust: pure verdicts on bytes (keys, root, envelopes, tokens, seed spore, PKI).

No sockets, no subprocesses: tests/test_layers.py checks the imports.
"""
