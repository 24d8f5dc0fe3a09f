"""``LedgerHarness`` over a ``RemoteLedger``: the engine served on a Unix socket in this
process, every call of the tests through ``connect`` (the clock as ``EngineHarness``'s)."""

from __future__ import annotations

from pathlib import Path

from puhui.ledger import LedgerOptions, LedgerServer, RemoteLedger, connect, serve
from tests.ledger.engine_harness import EngineHarness


class RemoteHarness(EngineHarness):
    def __init__(
        self,
        directory: Path,
        now: int = 0,
        *,
        url: str | None = None,
        options: LedgerOptions | None = None,
    ) -> None:
        super().__init__(directory, now, url=url, options=options)
        self.socket_path = directory / "ledger.sock"
        self._serve()

    def _serve(self) -> None:
        self.server: LedgerServer = serve(self.ledger, self.socket_path)
        self.remote: RemoteLedger = connect(self.socket_path)

    @property
    def client(self) -> RemoteLedger:
        return self.remote

    def reopen(self) -> None:
        self.remote.close()
        self.server.close()
        super().reopen()
        self._serve()

    def close(self) -> None:
        self.remote.close()
        self.server.close()
        super().close()
