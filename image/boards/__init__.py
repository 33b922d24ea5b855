"""Boards: what differs between machines (kernel, firmware, boot files, partition table).

Each board is one module with a `BOARD` object built on base.Board; adding a board touches
one file and the registry below.
"""

from __future__ import annotations

from image.boards import rpi, x86
from image.boards.base import Board

__all__ = ["Board", "get_board"]

BOARDS: dict[str, Board] = {"x86": x86.BOARD, "rpi4": rpi.RPI4, "rpi5": rpi.RPI5}


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise KeyError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}")
    return BOARDS[name]
