"""The console dashboard: a Textual app over tui/fetch.py (I/O) and tui/model.py (views).

Shape (Textual's): styles in app.tcss, `BINDINGS`, `compose()`, state in `var`s with
`watch_*` (vars, not reactives: a reactive on the App repaints the whole screen, too much
for a serial console), commands as `action_*`. All network I/O runs in one `@work` loop on the app's
event loop (aiohttp, never a blocking call), so the screen keeps answering keys while a
node is slow or gone. When the node read stops answering the connection line says so
and the next poll fails over (the operator's Hypha tries the next address; the console's
local channel retries its own node).

The operator's app (tui/actions.py `OperatorActions` given) can also show the held
network.yaml, make a join token (text and QR code) and push the network's network.yaml; a
node console's app is read-only and has none of those keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.reactive import var
from textual.widgets import DataTable, Footer, Input, Log, Static, TabbedContent, TabPane

from agent.errors import MyceliumError
from agent.views import MEMBER_HEAD, member_cells
from tui.actions import OperatorActions
from tui.fetch import Channel, Poller
from tui.model import (
    SERVICE_HEAD,
    SORT_KEYS,
    Dashboard,
    dashboard,
    filter_members,
    node_detail,
    sort_members,
)
from tui.screens import NodeScreen, PushScreen, TextScreen, TokenScreen

POLL_INTERVAL = 1.0  # seconds between polls while the node answers
CONSOLE_POLL_INTERVAL = 2.0  # ... on a node's console: half the CPU and serial output
RETRY_INTERVAL = 2.0  # ... and while it does not
MAIN_SCREEN_ONLY = ("tab", "filter", "sort", "detail", "show_yaml", "token", "push",
                    "refresh_now")


class DashboardApp(App[None]):
    """The dashboard of one network, read through `make_channel()`."""

    CSS_PATH = "app.tcss"
    TITLE = "mycelium"
    ENABLE_COMMAND_PALETTE = False  # every action has its key; ^p is one less glyph on a VT
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("m", "tab('members')", "Members"),
        Binding("b", "tab('backbone')", "Backbone"),
        Binding("s", "tab('services')", "Services"),
        Binding("e", "tab('events')", "Events"),
        Binding("slash", "filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("enter", "detail", "Detail", show=False),
        Binding("y", "show_yaml", "network.yaml"),
        Binding("t", "token", "Token"),
        Binding("p", "push", "Push"),
        Binding("r", "refresh_now", "Refresh", show=False),
    ]

    # var, not reactive: a reactive on the App repaints the whole screen when set (every
    # poll), which floods a serial console; the watchers update only what changed
    dash: var[Dashboard | None] = var(None, always_update=True)
    conn: var[str] = var("connecting...")
    sort_key: var[str] = var("name")
    filter_text: var[str] = var("")

    def __init__(self, make_channel: Callable[[], Channel],
                 actions: OperatorActions | None = None,
                 clock: Callable[[], float] = time.time,
                 poll_interval: float = POLL_INTERVAL) -> None:
        super().__init__()
        self.make_channel, self.actions, self.clock = make_channel, actions, clock
        self.poll_interval = poll_interval
        self.poller: Poller | None = None
        self.reading = ""  # "name at addr" of the node read last
        self.answering = False
        self.failover = ""  # the last fail-over, shown until the next one
        self._wake = asyncio.Event()
        self._events_of = ""  # node whose events the log shows
        self._events_seen = 0.0  # time of the last event written to the log

    # --- layout ---------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="header")
        yield Static("", id="conn")
        with TabbedContent(initial="members", id="tabs"):
            with TabPane("Members", id="members"):
                yield Input(placeholder="filter: name, role, state or address", id="filter")
                yield DataTable(id="members-table", cursor_type="row", zebra_stripes=False)
            with TabPane("Backbone", id="backbone"):
                with VerticalScroll():
                    yield Static("", id="backbone-text")
            with TabPane("Services", id="services"):
                yield DataTable(id="services-table", cursor_type="row")
            with TabPane("Events", id="events"):
                yield Log(id="events-log", max_lines=1000, auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#members-table", DataTable).add_columns(*MEMBER_HEAD)
        self.query_one("#services-table", DataTable).add_columns(*SERVICE_HEAD)
        self.query_one("#filter", Input).display = False
        self.query_one("#members-table", DataTable).focus()
        self.poll_loop()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("token", "show_yaml", "push") and self.actions is None:
            return False  # a node console is read-only: these keys do not exist there
        if action in MAIN_SCREEN_ONLY and len(self.screen_stack) > 1:
            return False  # under a detail or text screen, they would act unseen
        return True

    # --- data -----------------------------------------------------------------------

    @work(exclusive=True, group="poll")
    async def poll_loop(self) -> None:
        """Poll for as long as the app runs; a failure is shown, never raised."""
        channel = self.make_channel()
        self.poller = Poller(channel)
        try:
            while True:
                try:
                    raw = await self.poller.poll()
                except MyceliumError as e:
                    self._lost(str(e))
                    await self._sleep(RETRY_INTERVAL)
                    continue
                dash = dashboard(raw, self.clock())
                self._answered(dash)
                self.dash = dash
                await self._sleep(self.poll_interval)
        finally:
            await channel.close()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _answered(self, dash: Dashboard) -> None:
        now = f"{dash.header.node} at {dash.header.addr}"
        before, self.reading = self.reading, now
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.clock()))
        if before and before != now:  # the channel only moves on when a node fails
            self.failover = f"; failed over from {before.split()[0]} at {stamp}"
        self.answering = True
        label = self.poller.channel.label if self.poller else ""
        self.conn = f"reading {now} ({label}) {stamp}{self.failover}"

    def _lost(self, why: str) -> None:
        self.answering = False
        who = self.reading or "the node"
        self.conn = f"NOT ANSWERING: {who}: {why[:160]} -- retrying"

    # --- rendering ------------------------------------------------------------------

    def watch_conn(self, text: str) -> None:
        if not self._on_main_screen():
            return
        w = self.query_one("#conn", Static)
        w.update(text, layout=False)  # fixed height: no layout, so no full repaint
        w.set_class(text.startswith("NOT ANSWERING"), "lost")

    def watch_dash(self, dash: Dashboard | None) -> None:
        if dash is None or not self._on_main_screen():
            return
        _set_text(self.query_one("#header", Static), "\n".join(dash.header.lines()),
                  layout=False)
        self._fill_members(dash)
        _set_text(self.query_one("#backbone-text", Static), "\n".join(dash.backbone.lines()))
        _fill_table(self.query_one("#services-table", DataTable),
                    [(f"{s.kind}/{s.name}", s.cells()) for s in dash.services])
        self._fill_events(dash)

    def _on_main_screen(self) -> bool:
        """The main screen's widgets exist: not while the app closes (the poll worker can
        still set a var then; seen as NoMatches in a test)."""
        try:
            self.screen_stack[0].query_one("#conn")
        except (NoMatches, IndexError):
            return False
        return True

    def watch_sort_key(self) -> None:
        if self.dash is not None:
            self._fill_members(self.dash)

    def watch_filter_text(self) -> None:
        if self.dash is not None:
            self._fill_members(self.dash)

    def _fill_members(self, dash: Dashboard) -> None:
        rows = sort_members(filter_members(dash.members, self.filter_text), self.sort_key)
        now = self.clock()
        _fill_table(self.query_one("#members-table", DataTable),
                    [(m.name, member_cells(m, now)) for m in rows])

    def _fill_events(self, dash: Dashboard) -> None:
        log = self.query_one("#events-log", Log)
        if dash.header.node != self._events_of:  # another node read: its own history
            log.clear()
            self._events_of, self._events_seen = dash.header.node, 0.0
            log.write_line(f"-- events of {dash.header.node} --")
        new = [e for e in dash.events if e.time > self._events_seen]
        for e in new:
            log.write_line(e.line())
        if new:
            self._events_seen = new[-1].time

    # --- actions --------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab
        if tab == "members":
            self.query_one("#members-table", DataTable).focus()
        elif tab == "services":
            self.query_one("#services-table", DataTable).focus()

    def action_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.notify(f"members sorted by {self.sort_key}", timeout=2)

    def action_filter(self) -> None:
        self.action_tab("members")
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        box = self.query_one("#filter", Input)
        box.display = bool(event.value)
        self.query_one("#members-table", DataTable).focus()

    def action_refresh_now(self) -> None:
        self._wake.set()

    @on(DataTable.RowSelected, "#members-table")
    def _member_chosen(self, event: DataTable.RowSelected) -> None:
        self.open_detail(str(event.row_key.value))

    def action_detail(self) -> None:
        key = _row_key(self.query_one("#members-table", DataTable))
        if key:
            self.open_detail(key)

    def open_detail(self, name: str) -> None:
        if self.dash is not None and any(m.name == name for m in self.dash.members):
            self.push_screen(NodeScreen(name, self.detail_lines))

    async def detail_lines(self, name: str) -> list[str]:
        """Member `name` in detail, the node itself asked (through the operator's channel;
        a console shows what its own node knows of the others)."""
        dash, poller = self.dash, self.poller
        member = next((m for m in dash.members if m.name == name), None) if dash else None
        if member is None or poller is None or dash is None:
            return [f"{name} is not a member any more"]
        share, node, events, error = await poller.detail(member.addr, name)
        return node_detail(member, share, dash.placement, node, events, error).lines(
            self.clock())

    def action_show_yaml(self) -> None:
        data = self.poller.network_yaml if self.poller else None
        text = data.decode(errors="replace") if data else "(no verified state held yet)"
        version = self.dash.header.version if self.dash else 0
        self.push_screen(TextScreen(f"network.yaml v{version} (held by the network)", text))

    def action_token(self) -> None:
        if self.actions is not None:
            self.push_screen(TokenScreen(self.actions.make_token))

    def action_push(self) -> None:
        if self.actions is not None:
            self.push_screen(PushScreen(str(self.actions.net.network_yaml),
                                        self.actions.push))


def _set_text(widget: Static, text: str, layout: bool = True) -> None:
    """Update only on a change: every redraw is bytes on a 115200-baud serial console
    (and a layout pass repaints the whole screen: fixed-size widgets skip it)."""
    if getattr(widget, "_shown", None) != text:
        widget._shown = text  # type: ignore[attr-defined]
        widget.update(text, layout=layout)


def _fill_table(table: DataTable, rows: list[tuple[str, tuple[str, ...]]]) -> None:
    """Show `rows` (key, cells): the same keys in the same order are updated cell by cell
    where they changed (no flicker, the cursor stays, little output on a serial line);
    otherwise the rows are replaced and the cursor kept on the same key."""
    keys = [k for k, _ in rows]
    if keys == [str(r.value) for r in table.rows]:
        columns = list(table.columns)
        for key, cells in rows:
            for col, new in zip(columns, cells, strict=True):
                if table.get_cell(key, col) != new:
                    table.update_cell(key, col, new)
        return
    keep = _row_key(table)
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if keep in keys:
        table.move_cursor(row=keys.index(keep), animate=False)


def _row_key(table: DataTable) -> str:
    if table.row_count == 0:
        return ""
    try:
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
    except Exception:  # noqa: BLE001 - a cursor off the rows (table just emptied)
        return ""

