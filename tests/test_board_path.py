"""The board path up to the serial port: build command, rebuild rules, DUT choice, flashing decisions.

No board or ESP-IDF exists here, so esptool is faked at the connection level
(its connected-device object and ``esptool.main``, as pytest-embedded's own
tests record them) and the "board" behind the port is the virtual board: a
flash makes it report the flashed build's ID. Everything else -- pytest-
embedded's ``esp,idf`` services, its flasher, the harness's boot/flash
decisions and the protocol -- runs for real. What remains for a real board:
the ESP-IDF build itself, esptool talking to the ROM, and the chip.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import esptool
import pytest
import serial

from harness.device import firmware as fw
from harness.errors import HarnessError
from tests.conftest import ROOT, run_pytest


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A copy of the runner's ESP-IDF project the harness builds instead of the real one."""
    copy = tmp_path / "streaming_runner"
    shutil.copytree(fw.APP_DIR, copy, ignore=shutil.ignore_patterns("build*", "managed_components"))
    monkeypatch.setattr(fw, "APP_DIR", copy)
    monkeypatch.setenv("IDF_PATH", str(tmp_path / "esp-idf"))
    monkeypatch.setattr(fw.shutil, "which", lambda name: f"/opt/esp-idf/tools/{name}")
    return copy


def fake_idf_build(calls: list):
    """Stands in for idf.py: records the command, writes what an ESP-IDF build leaves for pytest-embedded."""

    def run(cmd, stdout=None, stderr=None, timeout=None):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-B") + 1])
        target = next(a for a in cmd if a.startswith("-DIDF_TARGET=")).split("=", 1)[1]
        (out / "bootloader").mkdir(parents=True, exist_ok=True)
        (out / "partition_table").mkdir(exist_ok=True)
        (out / "config").mkdir(exist_ok=True)
        for name in ("bootloader/bootloader.bin", "partition_table/partition-table.bin", "streaming_runner.bin"):
            (out / name).write_bytes(b"\xe9" + bytes(255))
        (out / "streaming_runner.elf").write_bytes(b"\x7fELF" + str(len(calls)).encode() * 64)
        assert not (out / "sdkconfig").exists(), "a rebuild must start from sdkconfig.defaults*"
        (out / "sdkconfig").write_text("# generated\n")
        (out / "config" / "sdkconfig.json").write_text(json.dumps({"IDF_TARGET": target, "RUNNER_UART_BAUD_RATE": 921600}))
        (out / "flasher_args.json").write_text(json.dumps({
            "write_flash_args": ["--flash_mode", "dio", "--flash_size", "16MB", "--flash_freq", "80m"],
            "flash_settings": {"flash_mode": "dio", "flash_size": "16MB", "flash_freq": "80m"},
            "flash_files": {"0x2000": "bootloader/bootloader.bin", "0x8000": "partition_table/partition-table.bin",
                            "0x10000": "streaming_runner.bin"},
            "bootloader": {"offset": "0x2000", "file": "bootloader/bootloader.bin", "encrypted": "false"},
            "app": {"offset": "0x10000", "file": "streaming_runner.bin", "encrypted": "false"},
            "partition-table": {"offset": "0x8000", "file": "partition_table/partition-table.bin", "encrypted": "false"},
            "extra_esptool_args": {"after": "hard_reset", "before": "default_reset", "stub": True, "chip": target},
        }))
        return subprocess.CompletedProcess(cmd, 0)

    return run


def test_build_command_line_and_rebuilds_only_when_sources_change(app, tmp_path):
    calls: list = []
    build = fake_idf_build(calls)
    firmware, built = fw.ensure_built("esp32p4", tmp_path / "build.log", run=build)
    out = app / "build_esp32p4"
    assert calls == [["idf.py", "-C", str(app), "-B", str(out), "-DIDF_TARGET=esp32p4",
                      f"-DSDKCONFIG={out / 'sdkconfig'}", "build"]]
    assert built and firmware.build_dir == out and firmware.baud == 921600
    assert firmware.elf_sha256 == hashlib.sha256((out / "streaming_runner.elf").read_bytes()).hexdigest()
    assert fw.ensure_built("esp32p4", tmp_path / "build.log", run=build) == (firmware, False)  # no second build
    assert len(calls) == 1
    (app / "sdkconfig.defaults").write_text((app / "sdkconfig.defaults").read_text() + "\n# changed\n")
    assert fw.ensure_built("esp32p4", tmp_path / "build.log", run=build)[1] and len(calls) == 2
    source = next((app / "main").glob("*.c*"))
    source.write_text(source.read_text() + "\n")
    fw.ensure_built("esp32p4", tmp_path / "build.log", run=build)
    assert len(calls) == 3
    fw.ensure_built("esp32s3", tmp_path / "build.log", run=build)  # another target builds into its own directory
    assert calls[-1][calls[-1].index("-B") + 1] == str(app / "build_esp32s3")


def test_a_failed_build_is_one_clear_error(app, tmp_path):
    def failing(cmd, stdout=None, stderr=None, timeout=None):
        return subprocess.CompletedProcess(cmd, 2)

    with pytest.raises(HarnessError, match=r"building the streaming runner for esp32p4 failed \(exit 2\); see .*build.log"):
        fw.ensure_built("esp32p4", tmp_path / "build.log", run=failing)


def test_without_esp_idf_there_is_no_build(monkeypatch, tmp_path):
    monkeypatch.delenv("IDF_PATH", raising=False)
    monkeypatch.setattr(fw, "APP_DIR", tmp_path)
    with pytest.raises(HarnessError, match=r"IDF_PATH is unset\); install ESP-IDF"):
        fw.ensure_built("esp32p4", tmp_path / "log")


def test_ports_per_target():
    assert fw.parse_ports("/dev/ttyUSB0", ["esp32p4", "esp32s3"]) == {"esp32p4": ["/dev/ttyUSB0"], "esp32s3": ["/dev/ttyUSB0"]}
    assert fw.parse_ports("esp32p4:/dev/ttyUSB0,esp32p4:/dev/ttyUSB1,esp32s3:/dev/ttyACM0", ["esp32p4", "esp32s3"]) == {
        "esp32p4": ["/dev/ttyUSB0", "/dev/ttyUSB1"], "esp32s3": ["/dev/ttyACM0"]}
    with pytest.raises(HarnessError, match="esp32c3 is not a selected target"):
        fw.parse_ports("esp32c3:/dev/ttyUSB0", ["esp32p4"])


def test_dut_board_without_esp_idf_or_board_is_one_line(tmp_path):
    env_without_idf = {k: v for k, v in __import__("os").environ.items() if k != "IDF_PATH"}
    proc = subprocess.run(
        [__import__("sys").executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "--dut=board",
         f"--artifacts-dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env_without_idf)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 4 and len(lines) == 1, lines
    assert lines[0].startswith("ERROR: --dut board: ESP-IDF is not set up (IDF_PATH is unset)")
    assert "install ESP-IDF" in lines[0] and "export.sh" in lines[0]


def test_a_port_asks_for_a_board_and_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(fw, "idf_missing", lambda: None)
    from harness.plugin.options import choose_dut

    with pytest.raises(HarnessError, match=r"--dut board --port /dev/ttyNOPE0: serial port /dev/ttyNOPE0 does not exist"):
        choose_dut("auto", ["esp32p4"], "/dev/ttyNOPE0")
    proc = run_pytest("--collect-only", f"--artifacts-dir={tmp_path}", "--target=esp32p4", "--port=/dev/ttyNOPE0")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 4 and len(lines) == 1 and lines[0].startswith("ERROR: --dut board --port /dev/ttyNOPE0: ")


def test_dut_auto_falls_back_visibly_in_header_report_junit_and_session(tmp_path):
    import xml.etree.ElementTree as ET

    proc = run_pytest("-k", "streamed_matches_offline", f"--artifacts-dir={tmp_path}", "--target=esp32p4",
                      "--models=tcn_seed", "--window-sizes=3", f"--junitxml={tmp_path / 'junit.xml'}")
    assert proc.returncode == 0, proc.stdout[-2000:]
    header = [line for line in proc.stdout.splitlines() if line.startswith("espdl-hil: DUT")]
    assert header == [header[0]] and header[0].startswith("espdl-hil: DUT = VIRTUAL (--dut auto fell back to the virtual board:")
    assert (tmp_path / "report.md").read_text().startswith("# Streaming sign-off report (virtual board, no chip)")
    properties = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "junit.xml").iter("property")}
    assert properties["hil_dut"] == "virtual" and properties["hil_dut_reason"].startswith("--dut auto fell back")
    session = json.loads((tmp_path / "session.json").read_text())
    assert session["dut"] == "virtual" and session["dut_reason"].startswith("--dut auto fell back")


class FakeLoader:
    """esptool's connected device, at the connection level: the port is real (the virtual board's pty)."""

    CHIP_NAME = "ESP32-P4"

    def __init__(self, board, port: str, resets: list):
        self.board = board
        self.serial_port = port
        self._port = serial.serial_for_url(port, baudrate=115200, timeout=0.05)  # the ROM's speed
        self.resets = resets

    def connect(self, *args, **kwargs):
        pass

    def hard_reset(self):
        self.resets.append(self.serial_port)
        self.board.reset()


@pytest.fixture
def fake_esptool(monkeypatch, tmp_path):
    """Connect esptool to a virtual board; record every esptool command, applying write-flash to the board."""
    from harness.emulator.virtual_board import VirtualBoard

    board = VirtualBoard("esp32p4", tmp_path / "vb.log").start()
    recorded: list[list[str]] = []
    resets: list[str] = []
    flashed = {}

    def connected_device(ports, port=None, connect_attempts=3, initial_baud=115200, chip="auto", **kwargs):
        assert chip == "esp32p4" and port == board.port
        return FakeLoader(board, port, resets)  # a fresh connection each time, as esptool opens the port

    def main(args, esp=None):
        recorded.append([str(a) for a in args])
        if "write-flash" in args:
            board.flash(flashed["build_id"])

    monkeypatch.setattr(esptool, "get_default_connected_device", connected_device)
    monkeypatch.setattr(esptool, "main", main)
    yield board, recorded, flashed, resets
    board.stop()


def test_flashes_only_a_board_that_runs_another_build(app, tmp_path, fake_esptool):
    from harness.plugin.boards import open_board

    board, recorded, flashed, resets = fake_esptool
    firmware, _ = fw.ensure_built("esp32p4", tmp_path / "build.log", run=fake_idf_build([]))
    flashed["build_id"] = firmware.elf_sha256[:32]
    out = firmware.build_dir
    with open_board(firmware, board.port) as link:  # the board reports the emulator's own build: flash
        assert firmware.matches(link.info.build_id) and link.info.target == "esp32p4"
    assert recorded == [[
        "--after", "hard_reset", "--before", "default_reset", "--chip", "esp32p4", "--baud", "921600", "write-flash",
        "0x2000", str(out / "bootloader" / "bootloader.bin"), "0x8000", str(out / "partition_table" / "partition-table.bin"),
        "0x10000", str(out / "streaming_runner.bin"), "--flash_mode", "dio", "--flash_size", "16MB", "--flash_freq", "80m",
    ]]
    with open_board(firmware, board.port) as link:  # same build now: no flash, only a reset
        assert link.info.build_id == flashed["build_id"]
        assert link.port.baudrate == 921600  # the runner's link speed from the build's sdkconfig
    assert len(recorded) == 1 and len(resets) >= 3


def test_a_board_that_stays_silent_after_flashing_is_one_clear_error(app, tmp_path, fake_esptool, monkeypatch):
    from harness.plugin.boards import open_board

    board, recorded, flashed, _ = fake_esptool
    firmware, _ = fw.ensure_built("esp32p4", tmp_path / "build.log", run=fake_idf_build([]))
    flashed["build_id"] = "0123456789abcdef"  # the port belongs to a board that keeps its own firmware
    with pytest.raises(HarnessError, match=r"does not run the runner just flashed \(it reports 0123456789abcdef\)"):
        with open_board(firmware, board.port):
            pass
    assert len(recorded) == 1


def test_wrong_target_firmware_is_one_clear_error(tmp_path):
    from harness.plugin.boards import open_virtual_board
    from harness.emulator.virtual_board import VirtualBoard

    board = VirtualBoard("esp32s3", tmp_path / "vb.log").start()
    try:
        board.target = "esp32p4"  # the case wants a P4; the device runs the S3 runner
        with pytest.raises(HarnessError, match="the device runs esp32s3 firmware but the case is for esp32p4; flash the esp32p4 runner"):
            with open_virtual_board(board):
                pass
    finally:
        board.stop()


def test_a_silent_device_times_out_with_one_clear_error():
    import os
    import pty
    import time

    from harness.device.dut import DeviceLink
    from harness.device.protocol import ProtocolError

    master, slave = pty.openpty()  # a port with nothing behind it
    port = serial.serial_for_url(os.ttyname(slave), timeout=0.05)
    try:
        link = DeviceLink(port, "silent board")
        started = time.monotonic()
        with pytest.raises(ProtocolError, match=r"silent board sent no boot banner within 0.5 s; check that the board runs"):
            link.wait_boot(0.5)
        assert time.monotonic() - started < 5
    finally:
        port.close()
        os.close(master)
        os.close(slave)


def test_a_runner_whose_boot_banner_was_lost_is_greeted_all_the_same(tmp_path):
    """The banner can vanish while the port is reopened or flushed around a reset: boot_and_hello then asks with
    HELLO, and a booted runner answers; a port with nothing behind it still gives None."""
    import os
    import pty
    import time

    from harness.device.dut import DeviceLink, boot_and_hello
    from harness.emulator.virtual_board import VirtualBoard

    board = VirtualBoard("esp32p4", tmp_path / "vb.log").start()
    try:
        with serial.serial_for_url(board.port, timeout=0.05) as port:
            def reset_and_lose_the_banner():
                board.reset()
                time.sleep(0.3)
                port.reset_input_buffer()

            info = boot_and_hello(DeviceLink(port, "board"), reset_and_lose_the_banner, timeout=1.0)
            assert info is not None and info.target == "esp32p4"
    finally:
        board.stop()
    master, slave = pty.openpty()
    try:
        with serial.serial_for_url(os.ttyname(slave), timeout=0.05) as port:
            assert boot_and_hello(DeviceLink(port, "nothing"), lambda: None, timeout=0.5) is None
    finally:
        os.close(master)
        os.close(slave)


def test_a_reset_after_a_hello_whose_reply_was_lost_still_finds_the_banner(tmp_path):
    """A HELLO makes the link wait for its INFO and set everything else aside; a reset supersedes it, so the boot
    banner that follows is taken, not dropped as a stale frame."""
    import time

    from harness.device import protocol as p
    from harness.device.dut import DeviceLink
    from harness.emulator.virtual_board import VirtualBoard

    board = VirtualBoard("esp32p4", tmp_path / "vb.log").start()
    try:
        with serial.serial_for_url(board.port, timeout=0.05) as port:
            link = DeviceLink(port, "board")
            link.send(p.Hello(p.PROTOCOL_VERSION, p.PROTOCOL_VERSION))
            time.sleep(0.3)
            port.reset_input_buffer()  # its INFO is lost
            board.reset()
            assert isinstance(link.wait_boot(3.0), p.Boot)
    finally:
        board.stop()
