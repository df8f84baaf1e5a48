"""Devices through pytest-embedded: the virtual board on its pty, a board flashed only when needed."""

from __future__ import annotations

import contextlib

from harness import compat
from harness.device.dut import DeviceLink, boot_and_hello
from harness.errors import HarnessError


@contextlib.contextmanager
def open_virtual_board(board):
    """The virtual board behind pytest-embedded's ``serial`` service on its pty, reset and greeted."""
    try:
        dut = _create_dut(embedded_services="serial", port=board.port)
    except HarnessError:
        if board.exit_reason():  # the process died before the port could be opened: its cause, not the cable
            raise HarnessError(f"virtual {board.target} board died: {board.exit_reason()}",
                               "see its log; the next case starts a fresh virtual board") from None
        raise
    with _owned(dut.serial):
        link = _link(dut, f"virtual {board.target} board", board.exit_reason)
        _expect_runner(link, boot_and_hello(link, board.reset), board.target)
        yield link


@contextlib.contextmanager
def open_board(firmware, port: str):
    """A board behind pytest-embedded's ``esp,idf`` services: flashed with ``firmware`` only if it runs another build."""
    name = f"{firmware.target} board on {port}"
    dut = _create_dut(embedded_services="esp,idf", app_path=str(firmware.build_dir.parent),
                      build_dir=firmware.build_dir.name, target=firmware.target, port=port, skip_autoflash=True)
    with _owned(dut.serial):
        if firmware.baud:  # esptool connected at the ROM's speed; the runner speaks at its own
            dut.serial.proc.baudrate = firmware.baud
        link = _link(dut, name, None)
        info = boot_and_hello(link, dut.serial.hard_reset)
        if info is None or not firmware.matches(info.build_id):
            dut.serial.flash()  # pytest-embedded's esp,idf flashing of build_<target>
            info = boot_and_hello(link, dut.serial.hard_reset)
            if info is None or not firmware.matches(info.build_id):
                raise HarnessError(
                    f"{name} does not run the runner just flashed (it reports {info.build_id if info else 'nothing'})",
                    "check --port: it may belong to another board",
                )
        _expect_runner(link, info, firmware.target)
        yield link


@contextlib.contextmanager
def _owned(serial):
    """The port is the link's alone while the case runs (pytest-embedded's reader stopped) and closed after it.

    Closed, not handed back: a reader restarted on a port whose device died would spend seconds reconnecting.
    """
    serial.stop_redirect_thread()
    try:
        yield serial
    finally:
        serial.close()


def _link(dut, name: str, liveness):
    def log(level: int, text: str) -> None:  # device logs go to pytest-embedded's dut.log
        compat.serial_queue(dut).put(f"[device] {text}\n".encode())

    return DeviceLink(dut.serial.proc, name, on_log=log, liveness=liveness)


def _expect_runner(link, info, target: str) -> None:
    if info is None:
        raise HarnessError(f"{link.name} sent no boot banner", "check that it runs the streaming runner")
    if info.target != target:
        raise HarnessError(
            f"the device runs {info.target} firmware but the case is for {target}",
            f"flash the {target} runner or pick --target {info.target}",
        )


def _create_dut(**kwargs):
    """pytest-embedded's DUT for these services; connection failures become one clear line."""
    import gc

    from pytest_embedded.dut_factory import DutFactory

    # closing a DUT scans every object the collector tracks (pytest-embedded's gc.get_referrers): the ones
    # alive now (torch, ESP-PPQ, loaded graphs) are frozen, garbage collected first, so the scan skips them
    gc.collect()
    gc.freeze()
    try:
        return DutFactory.create(**kwargs)
    except Exception as exc:  # esptool/pyserial: the board is absent, busy or another chip
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(
            f"cannot open the device on {kwargs.get('port')}: {detail}",
            "check the cable and that no other program (monitor, another test) holds the port",
        ) from exc
