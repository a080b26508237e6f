"""What a Flower app bundle (FAB) submitted by `xincept-server start` may hold: a descriptor, never code."""

from __future__ import annotations

import io
import tomllib
import zipfile

COMPONENTS = {"serverapp": "xincept.server.app:app", "clientapp": "xincept.client.app:app"}
FAB_FILES = {"pyproject.toml", "README.md"}  # what `xincept-server start` submits (xincept.server.superlink)


class FabRefused(Exception):
    """The app bundle is not the descriptor this process accepts."""


def check_fab(content: bytes, who: str = "this site") -> dict:
    """The FAB's [tool.flwr.app] table, once the bundle is known to hold no code and name the installed components.

    A FAB is a zip; Flower adds ``.info/CONTENT`` (file hashes). Anything else than ``pyproject.toml`` and
    ``README.md`` (a Python file, a wheel, a shared library) is refused, and so are components other than
    xincept's own: a site (or the SuperLink running the ServerApp in its own process) runs the code it installed,
    or nothing.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = {n for n in fab.namelist() if not n.endswith("/")}
            files = {n for n in names if not n.startswith(".info/")}
            if files - FAB_FILES or "pyproject.toml" not in files:
                raise FabRefused(f"the server's app bundle holds {sorted(files - FAB_FILES)}; {who} accepts only "
                                 f"{sorted(FAB_FILES)} (it runs its installed xincept code, never code from a bundle)")
            doc = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FabRefused(f"the server's app bundle is not a readable Flower app ({exc})") from None
    app = doc.get("tool", {}).get("flwr", {}).get("app", {})
    if app.get("components") != COMPONENTS:
        raise FabRefused(f"the server's app names components {app.get('components')}; {who} runs only {COMPONENTS}")
    return app
