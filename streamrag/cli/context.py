"""What the root command hands down to every command: the settings, loaded once.

``streamrag --config FILE <command>`` stores the path in the click context; a command
calls :func:`settings_of` and gets the settings of that file (and the environment), so
every command honours ``--config`` and none reads a global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from streamrag.config import Settings, load_settings


@dataclass
class CliState:
    config_path: Path | None
    verbose: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings


def settings_of(ctx: typer.Context) -> Settings:
    """The settings of this invocation (``--config``, environment, defaults)."""
    state = ctx.find_object(CliState) or CliState(None)  # None: no root callback ran
    return state.settings()


def echo_settled(moved: dict[str, dict[int, int]]) -> None:
    """Say which source offsets a finished bounded run committed itself
    (streamrag.runstats.settle_offsets)."""
    for topic, offsets in moved.items():
        typer.echo(f"committed {topic} offsets {offsets} (the job's did not land)", err=True)
