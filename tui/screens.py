"""The dashboard's secondary screens: a node in detail, a text (network.yaml), and the
join-token form with its QR code. Each is closed with Escape (or q)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from agent.errors import MyceliumError, SchemaError
from agent.trust.signed import parse_duration
from tui.qr import qr_lines


class _Closable(Screen[None]):
    BINDINGS = [Binding("escape", "close", "Back"), Binding("q", "close", "Back")]

    def action_close(self) -> None:
        self.dismiss()


class NodeScreen(_Closable):
    """One member in detail: `load(name)` asks the node (in a worker, once the screen is
    up); r asks again."""

    BINDINGS = [Binding("r", "reload", "Refresh")]

    def __init__(self, name: str, load: Callable[[str], Awaitable[list[str]]]) -> None:
        super().__init__()
        self.name_, self.load = name, load

    def compose(self) -> ComposeResult:
        yield Static(f"node {self.name_}", classes="title")
        with VerticalScroll():
            yield Static(f"asking {self.name_}...", id="detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    @work(exclusive=True)
    async def action_reload(self) -> None:
        lines = await self.load(self.name_)
        self.query_one("#detail", Static).update("\n".join(lines))


class TextScreen(_Closable):
    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_, self.text = title, text

    def compose(self) -> ComposeResult:
        yield Static(self.title_, classes="title")
        with VerticalScroll():
            yield Static(self.text, id="text", markup=False)
        yield Footer()


class TokenScreen(_Closable):
    """Role and lifetime in, a signed join token out: as text and as a QR code."""

    BINDINGS = [Binding("escape", "close", "Back")]  # q types into the form

    def __init__(self, make_token: Callable[[str, timedelta], str]) -> None:
        super().__init__()
        self.make_token = make_token

    def compose(self) -> ComposeResult:
        yield Static("join token: role (rhizomorph or sclerotium) and lifetime; Enter makes it",
                     classes="title")
        yield Input(value="rhizomorph", id="role")
        yield Input(value="24h", id="ttl")
        with ScrollableContainer(id="token-box"):
            yield Static("", id="token", markup=False)
            yield Static("", id="qr", markup=False)  # never wrapped: a wrapped QR is noise
        yield Footer()

    @on(Input.Submitted)
    def create(self) -> None:
        role = self.query_one("#role", Input).value.strip()
        try:
            token = self.make_token(role, parse_duration(self.query_one("#ttl", Input).value))
        except MyceliumError as e:
            self.query_one("#token", Static).update(f"error: {e}")
            return
        self.token = token
        self.query_one("#token", Static).update(f"{token}\n\none {role} node may join with "
                                                "it; its QR code (scroll right if cut):")
        self.query_one("#qr", Static).update("\n".join(qr_lines(token)))


class PushScreen(_Closable):
    """Sign and push the network's network.yaml on Enter, then follow it to every live node
    (a progress bar redrawn in place); Escape leaves (a push already sent goes on)."""

    BINDINGS = [Binding("enter", "push", "Push")]

    def __init__(self, path: str, push: Callable[[], AsyncIterator[str]]) -> None:
        super().__init__()
        self.path, self.push = path, push
        self.lines: list[str] = []
        self.started = False

    def compose(self) -> ComposeResult:
        yield Static(f"push {self.path}: Enter validates, signs the next version and pushes "
                     "it; Esc goes back", classes="title")
        with VerticalScroll():
            yield Static("", id="progress", markup=False)
        yield Footer()

    @work(exclusive=True)
    async def action_push(self) -> None:
        if self.started:
            return
        self.started = True
        try:
            async for line in self.push():
                if line.startswith("[") and self.lines and self.lines[-1].startswith("["):
                    self.lines[-1] = line  # the bar, redrawn in place
                else:
                    self.lines.append(line)
                self._show()
        except SchemaError as e:
            self.lines += ["push refused, network.yaml is not valid:", *e.problems]
        except MyceliumError as e:
            self.lines.append(f"push failed: {e}")
        self.lines.append("done")
        self._show()

    def _show(self) -> None:
        self.query_one("#progress", Static).update("\n".join(self.lines))
