"""Devices through pytest-embedded: the virtual board on its pty, a board flashed only when needed."""

from __future__ import annotations

import contextlib

from harness import compat
from harness.device.dut import DeviceLink, boot_and_hello
from harness.device.protocol import ProtocolError
from harness.errors import HarnessError


class HeldDevices:
    """Devices kept open from case to case, each opened, reset and greeted once.

    A passing case leaves its device as it is; the next case greets it again (HELLO: fresh numbering and
    credits, and proof that it still answers), gets its unchanged models kept ("already loaded",
    docs/protocol.md MODEL_BEGIN) and configures it, which restarts every stream. After a failing case the
    device is dropped and the next case opens, resets and uploads afresh, so a fault costs only its case.
    """

    def __init__(self):
        self._held: dict[str, tuple[contextlib.ExitStack, DeviceLink]] = {}

    def link(self, key: str, opener) -> tuple[DeviceLink, bool]:
        """The link held under ``key``, greeted again; else the one ``opener()`` (a context manager) opens.

        With it: whether it was opened (and reset) now.
        """
        held = self._held.get(key)
        if held is not None:
            try:
                held[1].hello()
                return held[1], False
            except ProtocolError:  # it went away between cases: open it afresh
                self.drop(key)
        stack = contextlib.ExitStack()
        link = stack.enter_context(opener())
        self._held[key] = (stack, link)
        return link, True

    def drop(self, key: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            held[0].close()

    def release(self) -> None:
        """Close every held device and hand its DUT back to pytest-embedded, which closes the rest of it after
        the current test (before its message-queue manager, a session fixture, shuts down)."""
        for key in list(self._held):
            self.drop(key)

    def close(self) -> None:
        """``release``, then close what was handed back (the session ended outside a test, e.g. interrupted)."""
        from pytest_embedded.dut_factory import DutFactory

        if self._held:
            self.release()
            DutFactory.close()


@contextlib.contextmanager
def open_virtual_board(board, keep: bool = False):
    """The virtual board behind pytest-embedded's ``serial`` service on its pty, reset and greeted.

    ``keep``: the DUT outlives the test that opens it (``HeldDevices``); else pytest-embedded closes it after the test.
    """
    try:
        dut, release = _create_dut(keep, embedded_services="serial", port=board.port)
    except HarnessError:
        if board.exit_reason():  # the process died before the port could be opened: its cause, not the cable
            raise HarnessError(f"virtual {board.target} board died: {board.exit_reason()}",
                               "see its log; the next case starts a fresh virtual board") from None
        raise
    with _owned(dut, release):
        link = _link(dut, f"virtual {board.target} board", board.exit_reason, board.reset)
        _expect_runner(link, boot_and_hello(link, board.reset), board.target)
        yield link


@contextlib.contextmanager
def open_board(firmware, port: str, keep: bool = False):
    """A board behind pytest-embedded's ``esp,idf`` services: flashed with ``firmware`` only if it runs another build.

    ``keep`` as for ``open_virtual_board``.
    """
    name = f"{firmware.target} board on {port}"
    dut, release = _create_dut(keep, embedded_services="esp,idf", app_path=str(firmware.build_dir.parent),
                      build_dir=firmware.build_dir.name, target=firmware.target, port=port, skip_autoflash=True)
    with _owned(dut, release):
        if firmware.baud:  # esptool connected at the ROM's speed; the runner speaks at its own
            dut.serial.proc.baudrate = firmware.baud
        link = _link(dut, name, None, dut.serial.hard_reset)
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
def _owned(dut, release):
    """The port is the link's alone while it is open (pytest-embedded's reader stopped) and closed after it.

    Closed, not handed back: a reader restarted on a port whose device died would spend seconds reconnecting.
    """
    dut.serial.stop_redirect_thread()
    try:
        yield dut.serial
    finally:
        dut.serial.close()
        if release is not None:  # a kept DUT: pytest-embedded closes the rest of it
            release()


def _link(dut, name: str, liveness, reset):
    def log(level: int, text: str) -> None:  # device logs go to pytest-embedded's dut.log
        compat.serial_queue(dut).put(f"[device] {text}\n".encode())

    return DeviceLink(dut.serial.proc, name, on_log=log, liveness=liveness, reset=reset)


def _expect_runner(link, info, target: str) -> None:
    if info is None:
        raise HarnessError(f"{link.name} sent no boot banner", "check that it runs the streaming runner")
    if info.target != target:
        raise HarnessError(
            f"the device runs {info.target} firmware but the case is for {target}",
            f"flash the {target} runner or pick --target {info.target}",
        )


def _create_dut(keep: bool, **kwargs):
    """pytest-embedded's DUT for these services; connection failures become one clear line.

    ``keep``: taken out of the DUTs pytest-embedded closes after each test; with it comes the ``release`` that
    hands it back (``_owned`` calls it), else None.
    """
    import gc

    from pytest_embedded.dut_factory import DutFactory

    # closing a DUT scans every object the collector tracks (pytest-embedded's gc.get_referrers): the ones
    # alive now (torch, ESP-PPQ, loaded graphs) are frozen, garbage collected first, so the scan skips them
    gc.collect()
    gc.freeze()
    try:
        dut = DutFactory.create(**kwargs)
    except Exception as exc:  # esptool/pyserial: the board is absent, busy or another chip
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(
            f"cannot open the device on {kwargs.get('port')}: {detail}",
            "check the cable and that no other program (monitor, another test) holds the port",
        ) from exc
    return dut, (compat.keep_factory_dut(dut) if keep else None)
