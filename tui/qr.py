"""A QR code as text: two modules per character cell with block characters, so a join
token can be scanned off a terminal or a serial console (no colours, no images).

Pure: text in, lines out. The code itself is made by segno (a maintained, dependency-free
QR library); low error correction keeps a ~300-character token small enough to scroll.
"""

from __future__ import annotations

import segno

BORDER = 2  # quiet zone in modules (the standard asks 4; 2 scans on a dark terminal)
# (upper module dark, lower module dark) -> cell; dark modules are drawn as blank so the
# code reads light-on-dark terminals as dark-on-light paper would.
CELLS = {(False, False): "\u2588", (True, False): "\u2584", (False, True): "\u2580",
         (True, True): " "}


def qr_lines(text: str) -> list[str]:
    """The QR code of `text`, one string per two module rows, with its quiet zone."""
    rows = [[bool(v) for v in row] for row in
            segno.make(text, error="l", micro=False).matrix_iter(border=BORDER)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    return ["".join(CELLS[(a, b)] for a, b in zip(top, low, strict=True))
            for top, low in zip(rows[::2], rows[1::2], strict=True)]
