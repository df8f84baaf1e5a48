"""Stage 4 on a board: build the ESP-IDF streaming runner, find the board, flash it only when needed.

The runner (``firmware/streaming_runner``) is built with ``idf.py`` into
``build_<target>`` once per target, and only when its sources or sdkconfig
defaults changed since the last build (a stamp holds their digest). A board
is flashed by pytest-embedded's ``esp,idf`` services, and only when the build
ID it reports in INFO differs from the build's ELF SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.resources import shipped

APP_DIR = shipped("firmware") / "streaming_runner"
APP_NAME = "streaming_runner"
STAMP = "hil-sources.sha256"
BUILD_TIMEOUT = 1800
# USB vendor IDs of Espressif's own USB (USB-Serial-JTAG) and the USB-UART bridges on dev boards
BOARD_USB_VIDS = {0x303A: "Espressif USB-Serial-JTAG", 0x10C4: "Silicon Labs CP210x", 0x1A86: "WCH CH34x/CH910x",
                  0x0403: "FTDI"}
IDF_HELP = "https://docs.espressif.com/projects/esp-idf/en/stable/esp32p4/get-started/"
IDF_VERSION = "v5.5.2 or newer"  # main/idf_component.yml pins the range
DEFAULT_LINK_BAUD = 921600


@dataclass(frozen=True)
class Firmware:
    """A built runner for one target."""

    target: str
    build_dir: Path
    elf_sha256: str
    baud: int | None  # UART baud rate of the runner's link; None when it speaks over USB-Serial-JTAG

    def matches(self, build_id: str) -> bool:
        """Whether a board reporting ``build_id`` runs this build (the app description's ELF SHA-256, maybe cut)."""
        build_id = build_id.strip().lower()
        return len(build_id) >= 8 and self.elf_sha256.startswith(build_id)


def build_dir(target: str) -> Path:
    return APP_DIR / f"build_{target}"


def source_digest(target: str) -> str:
    """What decides the firmware: every source and config file of the app (build dirs excluded) and the target."""
    h = hashlib.sha256(target.encode())
    for path in sorted(APP_DIR.rglob("*")):
        rel = path.relative_to(APP_DIR)
        if path.is_file() and not rel.parts[0].startswith("build") and rel.parts[0] not in ("managed_components",):
            h.update(str(rel).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build_command(target: str, directory: Path) -> list[str]:
    """The one command line that builds the runner for ``target`` into ``directory``."""
    return [
        "idf.py", "-C", str(APP_DIR), "-B", str(directory),
        f"-DIDF_TARGET={target}", f"-DSDKCONFIG={directory / 'sdkconfig'}", "build",
    ]


def idf_missing() -> str | None:
    """Why ESP-IDF cannot build here, or None."""
    if not os.environ.get("IDF_PATH"):
        return "ESP-IDF is not set up (IDF_PATH is unset)"
    if shutil.which("idf.py") is None:
        return f"IDF_PATH is {os.environ['IDF_PATH']} but idf.py is not on PATH (run . $IDF_PATH/export.sh)"
    return None


def prebuilt(target: str) -> Firmware | None:
    """The build in ``build_<target>`` if it is complete and built from the current sources."""
    directory = build_dir(target)
    elf = directory / f"{APP_NAME}.elf"
    stamp = directory / STAMP
    if not (elf.is_file() and (directory / "flasher_args.json").is_file() and stamp.is_file()):
        return None
    if stamp.read_text().strip() != source_digest(target):
        return None
    config = directory / "config" / "sdkconfig.json"
    options = json.loads(config.read_text()) if config.is_file() else {}
    baud = None if options.get("RUNNER_LINK_USB_SERIAL_JTAG") else int(options.get("RUNNER_UART_BAUD_RATE", DEFAULT_LINK_BAUD))
    return Firmware(target, directory, hashlib.sha256(elf.read_bytes()).hexdigest(), baud)


def ensure_built(target: str, log: Path, run: Callable = subprocess.run) -> tuple[Firmware, bool]:
    """The runner for ``target``, building it if the sources changed; (firmware, whether it was built now)."""
    current = prebuilt(target)
    if current is not None:
        return current, False
    missing = idf_missing()
    if missing:
        raise HarnessError(
            f"cannot build the streaming runner for {target}: {missing}",
            f"install ESP-IDF {IDF_VERSION} ({IDF_HELP}) and run . $IDF_PATH/export.sh",
        )
    directory = build_dir(target)
    digest = source_digest(target)
    # ESP-IDF applies sdkconfig.defaults* only to a build directory without sdkconfig: start from them again
    (directory / "sdkconfig").unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        result = run(build_command(target, directory), stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise HarnessError(
            f"building the streaming runner for {target} failed (exit {result.returncode})",
            f"see {log}; the last lines name the failing file",
        )
    (directory / STAMP).write_text(digest)
    built = prebuilt(target)
    if built is None:
        raise HarnessError(f"idf.py finished but {directory} holds no {APP_NAME}.elf", f"see {log}")
    return built, True


def board_ports() -> list[str]:
    """Serial ports that look like an ESP32 board (Espressif USB or a dev-board USB-UART bridge)."""
    from serial.tools import list_ports

    return sorted(p.device for p in list_ports.comports() if p.vid in BOARD_USB_VIDS)


def parse_ports(option: str | None, targets: list[str]) -> dict[str, list[str]]:
    """``--port`` as ports per target: ``/dev/ttyUSB0`` (every target), or ``esp32p4:/dev/ttyUSB0,esp32s3:/dev/ttyACM0``."""
    ports: dict[str, list[str]] = {t: [] for t in targets}
    for item in [i for i in (option or "").replace("|", ",").split(",") if i]:
        target, sep, port = item.partition(":")
        if sep and target in ports:
            ports[target].append(port)
        elif sep and not target.startswith("/") and target not in ports:
            raise HarnessError(f"--port {item}: {target} is not a selected target", f"use one of {', '.join(targets)}")
        else:
            for t in targets:
                ports[t].append(item)
    return ports


def board_unavailable(targets: list[str], port_option: str | None) -> tuple[str, str] | None:
    """Why the board path cannot run for ``targets`` and how to fix it, or None when it can."""
    no_build = [t for t in targets if prebuilt(t) is None]
    if no_build and idf_missing():
        return (f"{idf_missing()} and firmware/streaming_runner has no current build for {', '.join(no_build)}",
                f"install ESP-IDF {IDF_VERSION} ({IDF_HELP}) and run . $IDF_PATH/export.sh")
    ports = parse_ports(port_option, targets) if port_option else {t: board_ports() for t in targets}
    absent = sorted({p for listed in ports.values() for p in listed if not Path(p).exists()})
    if absent:
        return (f"serial port {', '.join(absent)} does not exist", "connect the board, or pass the port it is on (--port)")
    without = [t for t, p in ports.items() if not p]
    if without:
        return (f"no board found for {', '.join(without)} (no serial port of an Espressif USB or USB-UART bridge)",
                "connect the board or pass --port=/dev/ttyUSB0")
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.device.firmware build --target esp32p4``: build (or reuse) the runner, print its directory."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Build the streaming runner with ESP-IDF (needs only the stdlib).")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--target", required=True, choices=["esp32p4", "esp32s3"])
    args = parser.parse_args(argv)
    try:
        firmware, built = ensure_built(args.target, Path("artifacts") / "logs" / f"build-{args.target}.log")
    except HarnessError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{'built' if built else 'up to date'}: {firmware.build_dir} (ELF SHA-256 {firmware.elf_sha256[:16]}…)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
