"""Static checks of the firmware sources, without ESP-IDF or a board.

1. cppcheck over every C/C++ source under firmware/ (the ESP-IDF app, the portable core, the host build).
2. The ESP-IDF project's structure: what ``idf.py`` needs to build it, the pinned ESP-DL, Kconfig symbols that
   exist, the sdkconfig defaults that matter (PSRAM, the ESP32-P4 revision), and no stdio I/O in the app (the
   console port carries the binary protocol).

The ESP-IDF option names below were checked in the Kconfig files of ESP-IDF v5.5.2, v5.5.5 and v6.0.2, the
range main/idf_component.yml allows (firmware/README.md). A name outside these lists fails until someone checks
it there and adds it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

FIRMWARE = ROOT / "firmware"
APP = FIRMWARE / "streaming_runner"
MAIN = APP / "main"
CORE = APP / "components" / "runner_core"

# ESP-IDF symbols the app's C/C++/CMake sources use.
VERIFIED_IDF_SYMBOLS = {"IDF_TARGET", "IDF_TARGET_ESP32P4", "IDF_TARGET_ESP32S3"}
# ESP-IDF symbols main/Kconfig.projbuild refers to (all defined by ESP-IDF's Kconfig for every target).
VERIFIED_KCONFIG_SYMBOLS = {"IDF_TARGET_ESP32P4", "IDF_TARGET_ESP32S3", "SOC_USB_SERIAL_JTAG_SUPPORTED",
                            "SOC_GPIO_OUT_RANGE_MAX"}
# HP UARTs per target, SOC_UART_HP_NUM in components/soc/<target>/include/soc/soc_caps.h (v5.5.2, v5.5.5, v6.0.2):
# the ports the UART driver takes as uart_port_t (esp32p4's LP UART is not one of them).
UART_HP_NUM = {"esp32s3": 3, "esp32p4": 5}
# esp_reset_reason_t in components/esp_system/include/esp_system.h: the same 16 values in v5.5.2 and v6.0.2.
RESET_REASONS = ["UNKNOWN", "POWERON", "EXT", "SW", "PANIC", "INT_WDT", "TASK_WDT", "WDT", "DEEPSLEEP", "BROWNOUT",
                 "SDIO", "USB", "JTAG", "EFUSE", "PWR_GLITCH", "CPU_LOCKUP"]
# ESP-IDF options the sdkconfig.defaults* files name (set, or mentioned in their instructions).
VERIFIED_IDF_OPTIONS = {
    # flash, partitions, speed
    "ESPTOOLPY_FLASHSIZE_4MB", "ESPTOOLPY_FLASHMODE_QIO", "PARTITION_TABLE_CUSTOM", "PARTITION_TABLE_CUSTOM_FILENAME",
    "COMPILER_OPTIMIZATION_PERF", "ESP_SYSTEM_ALLOW_RTC_FAST_MEM_AS_HEAP", "APP_REPRODUCIBLE_BUILD",
    # PSRAM, CPU, caches
    "SPIRAM", "SPIRAM_IGNORE_NOTFOUND", "SPIRAM_MODE_OCT", "SPIRAM_MODE_QUAD", "SPIRAM_SPEED_80M", "SPIRAM_SPEED_200M",
    "ESP_DEFAULT_CPU_FREQ_MHZ_240", "ESP_DEFAULT_CPU_FREQ_MHZ_360", "ESP_DEFAULT_CPU_FREQ_MHZ_400",
    "ESP32S3_INSTRUCTION_CACHE_32KB", "ESP32S3_DATA_CACHE_64KB", "ESP32S3_DATA_CACHE_LINE_64B",
    "CACHE_L2_CACHE_256KB", "CACHE_L2_CACHE_LINE_128B",
    # ESP32-P4 revision
    "ESP32P4_SELECTS_REV_LESS_V3", "ESP32P4_REV_MIN_0", "ESP32P4_REV_MIN_300",
    # console, logs, tasks, watchdogs
    "ESP_CONSOLE_UART_DEFAULT", "ESP_CONSOLE_SECONDARY_NONE", "ESP_MAIN_TASK_AFFINITY_CPU0",
    "BOOTLOADER_LOG_LEVEL_WARN", "LOG_DEFAULT_LEVEL_WARN", "LOG_MAXIMUM_LEVEL_INFO", "LOG_COLORS",
    "ESP_TASK_WDT_EN", "ESP_TASK_WDT_INIT", "ESP_TASK_WDT_PANIC", "ESP_TASK_WDT_CHECK_IDLE_TASK_CPU0",
    "ESP_TASK_WDT_CHECK_IDLE_TASK_CPU1", "ESP_INT_WDT",
}
# stdio calls that would put bytes on (or take them from) the console, i.e. the protocol port.
STDIO_IO = re.compile(
    r"\b(printf|vprintf|puts|putchar|getchar|getc|fgetc|scanf|vscanf|gets|esp_rom_printf|ets_printf)\s*\("
    r"|\b(fputs|fputc|putc|fprintf|vfprintf|fwrite|fflush)\s*\([^;]*\b(stdout|stderr)\b"
    r"|\b(fgets|fread|fscanf|getline)\s*\([^;]*\bstdin\b"
)


def generated(path: Path) -> bool:
    """Build output and downloaded components, not sources."""
    return any(part.startswith("build") or part == "managed_components" for part in path.relative_to(FIRMWARE).parts)


def sources(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in suffixes and p.is_file() and not generated(p))


def strip_comments_and_strings(code: str) -> str:
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', " ", code, flags=re.S)


def kconfig_symbols() -> set[str]:
    return set(re.findall(r"^\s*(?:menu)?config\s+([A-Z0-9_]+)", (MAIN / "Kconfig.projbuild").read_text(), re.M))


def sdkconfig(name: str) -> dict[str, str]:
    """Active settings of a defaults file; ``# CONFIG_X is not set`` reads as ``n``."""
    settings = {}
    for line in (APP / name).read_text().splitlines():
        if m := re.fullmatch(r"CONFIG_([A-Z0-9_]+)=(.*)", line.strip()):
            settings[m[1]] = m[2]
        elif m := re.fullmatch(r"# CONFIG_([A-Z0-9_]+) is not set", line.strip()):
            settings[m[1]] = "n"
    return settings


# ---------------------------------------------------------------------------------------------- cppcheck

# The app as ESP-IDF builds it: sdkconfig.h and main/CMakeLists.txt define these macros. cppcheck silently skips
# a configuration that ends in #error or uses a macro without a value, which without them is every
# configuration of app_main.c; so each run names one configuration, and the two cover both targets and links.
APP_CONFIGS = {
    "esp32p4-uart": ["CONFIG_IDF_TARGET=\"esp32p4\"", "CONFIG_IDF_TARGET_ESP32P4=1", "CONFIG_RUNNER_LINK_UART=1",
                     "CONFIG_RUNNER_UART_PORT=0", "CONFIG_RUNNER_UART_BAUD_RATE=921600", "CONFIG_RUNNER_UART_TX_PIN=-1",
                     "CONFIG_RUNNER_UART_RX_PIN=-1", "SOC_UART_HP_NUM=5"],  # soc/soc_caps.h of esp32p4
    "esp32s3-usb-serial-jtag": ["CONFIG_IDF_TARGET=\"esp32s3\"", "CONFIG_IDF_TARGET_ESP32S3=1",
                                "CONFIG_RUNNER_LINK_USB_SERIAL_JTAG=1"],
}
APP_COMMON = ["CONFIG_RUNNER_CREDITS=64", "CONFIG_RUNNER_MAX_PAYLOAD=4096", "RUNNER_ESP_DL_VERSION=\"3.3.9\""]


def cppcheck_command(files: list[Path], defines: list[str]) -> list[str]:
    include_dirs = sorted({p.parent for p in sources(FIRMWARE, (".h", ".hpp"))})
    return [
        "cppcheck",
        "--enable=warning,style,performance,portability",
        "--error-exitcode=1",
        "--std=c99",  # the core, the host build and the app's C files
        "--std=c++17",  # espdl_backend.cpp
        "--inline-suppr",
        "--quiet",
        # ESP-IDF and ESP-DL are not installed here: their <...> headers cannot be found, by design. Quoted
        # includes that are missing are not reported at these --enable levels.
        "--suppress=missingIncludeSystem",
        *[f"-D{d}" for d in defines],
        *[f"-I{d}" for d in include_dirs],
        *[str(f) for f in files],
    ]


@pytest.mark.parametrize("config", ["portable", *APP_CONFIGS])
def test_cppcheck_reports_nothing(config):
    if shutil.which("cppcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("cppcheck is missing; CI must install it (apt-get install cppcheck)")
        pytest.skip("cppcheck is not installed: apt-get install cppcheck")
    files = sources(FIRMWARE, (".c", ".cpp"))
    app = [f for f in files if f.is_relative_to(MAIN)]
    assert MAIN / "espdl_backend.cpp" in app and MAIN / "app_main.c" in app
    if config == "portable":  # the core and the host build: every configuration cppcheck finds
        command = cppcheck_command([f for f in files if f not in app], [])
    else:
        command = cppcheck_command(app, APP_CONFIGS[config] + APP_COMMON)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"cppcheck reports:\n{findings}"


# --------------------------------------------------------------------------------------------- structure


def test_project_layout_is_what_idf_py_builds():
    top = (APP / "CMakeLists.txt").read_text()
    include = top.find("include($ENV{IDF_PATH}/tools/cmake/project.cmake)")
    assert top.find("cmake_minimum_required(") > -1
    assert -1 < include < top.find("project(streaming_runner)")

    main = (MAIN / "CMakeLists.txt").read_text()
    registered = re.search(r"idf_component_register\((.*?)\n\)", main, re.S)
    assert registered, "main/CMakeLists.txt must call idf_component_register"
    listed = set(re.findall(r'"([^"]+\.(?:c|cpp))"', registered[1]))
    on_disk = {p.name for p in sources(MAIN, (".c", ".cpp"))}
    assert listed == on_disk, "main/CMakeLists.txt SRCS must name exactly the sources in main/"
    requires = re.search(r"PRIV_REQUIRES(.*)", registered[1], re.S)[1]
    for component in ("runner_core", "espressif__esp-dl", "esp_driver_uart", "esp_driver_usb_serial_jtag"):
        assert re.search(rf"^\s*{component}\b", requires, re.M), f"{component} missing from PRIV_REQUIRES"
    assert (CORE / "CMakeLists.txt").is_file() and (CORE / "include" / "runner_core.h").is_file()


def test_manifest_pins_esp_dl_and_idf_to_ranges():
    manifest = (MAIN / "idf_component.yml").read_text()
    for name in ("espressif/esp-dl", "idf"):
        m = re.search(rf'^\s*{re.escape(name)}:\s*\n\s*version:\s*"([^"]+)"', manifest, re.M)
        assert m, f"idf_component.yml has no version for {name}"
        bounds = m[1].replace(" ", "").split(",")
        assert len(bounds) == 2 and bounds[0].startswith(">=") and bounds[1].startswith("<"), (
            f"{name}: {m[1]!r} is not a closed range >=low,<high"
        )


def test_config_symbols_in_sources_exist():
    known = kconfig_symbols() | VERIFIED_IDF_SYMBOLS
    for path in [*sources(MAIN, (".c", ".cpp", ".h")), MAIN / "CMakeLists.txt", APP / "CMakeLists.txt"]:
        text = path.read_text()
        code = re.sub(r"#[^\n]*", " ", text) if path.name == "CMakeLists.txt" else strip_comments_and_strings(text)
        used = set(re.findall(r"\bCONFIG_([A-Z0-9_]+)", code))
        assert used <= known, f"{path.relative_to(ROOT)} uses undefined CONFIG_{sorted(used - known)}"


def test_sdkconfig_defaults_name_verified_options():
    known = kconfig_symbols() | VERIFIED_IDF_OPTIONS
    for name in ("sdkconfig.defaults", "sdkconfig.defaults.esp32s3", "sdkconfig.defaults.esp32p4"):
        named = set(re.findall(r"\bCONFIG_([A-Z0-9_]+)", (APP / name).read_text()))
        assert named <= known, f"{name} names unverified options {sorted(named - known)}"


def test_sdkconfig_defaults_set_psram_cpu_and_p4_revision():
    common, s3, p4 = (sdkconfig(n) for n in ("sdkconfig.defaults", "sdkconfig.defaults.esp32s3",
                                               "sdkconfig.defaults.esp32p4"))
    assert common["SPIRAM"] == "y"
    assert s3.get("SPIRAM_MODE_OCT") == "y" or s3.get("SPIRAM_MODE_QUAD") == "y"
    assert s3["ESP_DEFAULT_CPU_FREQ_MHZ_240"] == "y"
    # the revision choice must be explicit (its default differs between ESP-IDF releases) and consistent
    assert p4["ESP32P4_SELECTS_REV_LESS_V3"] in ("y", "n")
    rev_min = [k for k, v in p4.items() if k.startswith("ESP32P4_REV_MIN_") and v == "y"]
    assert len(rev_min) == 1
    before_v3 = p4["ESP32P4_SELECTS_REV_LESS_V3"] == "y"
    assert (int(rev_min[0].rsplit("_", 1)[1]) < 300) == before_v3
    assert p4.get("ESP_DEFAULT_CPU_FREQ_MHZ_360" if before_v3 else "ESP_DEFAULT_CPU_FREQ_MHZ_400") == "y"
    # a long model run starves the runner core's idle task: it must not be watched
    assert common["ESP_TASK_WDT_CHECK_IDLE_TASK_CPU1"] == "n" and common["ESP_TASK_WDT_PANIC"] == "n"


def test_partition_table_holds_the_app():
    common = sdkconfig("sdkconfig.defaults")
    assert common["PARTITION_TABLE_CUSTOM"] == "y"
    table = APP / common["PARTITION_TABLE_CUSTOM_FILENAME"].strip('"')
    rows = [[f.strip() for f in line.split(",")] for line in table.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    apps = [r for r in rows if r[1] == "app"]
    assert len(apps) == 1 and apps[0][2] == "factory"
    offset, size = int(apps[0][3], 0), apps[0][4]
    size_bytes = int(size[:-1]) << (10 if size[-1] == "K" else 20) if size[-1] in "KM" else int(size, 0)
    assert size_bytes >= 2 << 20, "ESP-DL's operator library needs a factory app of at least 2 MB"
    flash_mb = [int(m[1]) for k in common if (m := re.fullmatch(r"ESPTOOLPY_FLASHSIZE_(\d+)MB", k))]
    assert len(flash_mb) == 1 and offset + size_bytes <= flash_mb[0] << 20


def test_app_never_uses_stdio_io():
    for path in sources(MAIN, (".c", ".cpp", ".h")):
        code = strip_comments_and_strings(path.read_text())
        calls = [m[0] for m in STDIO_IO.finditer(code)]
        assert not calls, f"{path.relative_to(ROOT)} calls stdio I/O {calls}: the console port carries the protocol"


def test_esp_dl_is_called_from_one_file():
    for path in sources(MAIN, (".c", ".cpp", ".h")):
        text = path.read_text()
        uses = re.search(r"\b(dl|fbs)::", strip_comments_and_strings(text)) or re.search(
            r'^\s*#\s*include\s*[<"](dl_|fbs_)', text, re.M)
        assert path.name == "espdl_backend.cpp" or not uses, f"{path.name} uses ESP-DL: keep it in espdl_backend.cpp"


# ------------------------------------------------------------------------------------- the review's fixes


def kconfig_entry(name: str) -> str:
    """The lines of ``config <name>`` in main/Kconfig.projbuild, up to the next entry."""
    text = (MAIN / "Kconfig.projbuild").read_text()
    m = re.search(rf"^\s*config {name}\n(.*?)(?=^\s*(?:config|choice|endchoice|menu|endmenu)\b)", text, re.M | re.S)
    assert m, f"no config {name}"
    return m[1]


def test_uart_port_range_is_the_targets_uarts():
    """RUNNER_UART_PORT takes exactly the HP UARTs of the target: 0-2 on esp32s3, 0-4 on esp32p4."""
    entry = kconfig_entry("RUNNER_UART_PORT")
    ranges = re.findall(r"^\s*range\s+(\S+)\s+(\S+)(?:\s+if\s+(\S+))?\s*$", entry, re.M)
    assert ranges, "RUNNER_UART_PORT has no range"
    assert all(cond for _, _, cond in ranges), "an unconditional range would allow a UART some target lacks"
    by_target = {cond: (int(lo), int(hi)) for lo, hi, cond in ranges}
    assert by_target == {f"IDF_TARGET_{t.upper()}": (0, n - 1) for t, n in UART_HP_NUM.items()}
    # and the source refuses a stale sdkconfig's port at compile time against the same number
    link = (MAIN / "runner_link.c").read_text()
    assert re.search(r"^#if CONFIG_RUNNER_UART_PORT >= SOC_UART_HP_NUM\b[^\n]*\n#error", link, re.M)


def test_kconfig_refers_to_verified_symbols():
    text = re.sub(r"#[^\n]*", " ", (MAIN / "Kconfig.projbuild").read_text())
    words = set(re.findall(r"\b(?:depends on|if|range\s+\S+)\s+([A-Z][A-Z0-9_]+)", text))
    words |= set(re.findall(r"\brange\s+-?\d+\s+([A-Z][A-Z0-9_]+)", text))
    assert words <= kconfig_symbols() | VERIFIED_KCONFIG_SYMBOLS, sorted(words - kconfig_symbols())


def _function(path: Path, name: str) -> str:
    """The body of function ``name`` in ``path`` (comments and strings removed), up to the next top-level '}'."""
    code = strip_comments_and_strings(path.read_text())
    m = re.search(rf"\b{name}\([^;{{]*\)\s*\{{(.*?)\n\}}", code, re.S)
    assert m, f"{path.name} has no function {name}"
    return m[1]


def test_backend_widens_the_cycle_count_and_checks_memory_before_esp_dl():
    backend = MAIN / "espdl_backend.cpp"
    # both runs, plain and probed, are timed (and hand over output and cache) the one way: timed_run
    for runner in ("module_run", "module_run_probed"):
        body = _function(backend, runner)
        assert body.count("timed_run(m,") == 1 and "esp_cpu_get_cycle_count" not in body, runner
    run = _function(backend, "timed_run")
    # the 32-bit counter's difference goes through the core's widening with the 64-bit timer: never truncated
    assert re.search(r"rc_cycles_widen\(\s*static_cast<uint32_t>\(after - before\)", run)
    assert "static_cast<uint32_t>(end - start)" not in run and "uint32_t>(esp_cpu_get_cycle_count" not in run
    assert run.index("esp_cpu_get_cycle_count") < run.index("esp_timer_get_time")
    assert run.rindex("esp_timer_get_time") < run.rindex("esp_cpu_get_cycle_count")
    load = _function(backend, "model_load")
    assert load.index("rc_espdl_need(") < load.index("fits(") < load.index("new_model(")
    bind = _function(backend, "module_bind")
    assert bind.index("fits(") < bind.index("new_model(")
    fits = _function(backend, "fits")
    assert "heap_caps_get_free_size(MALLOC_CAP_SPIRAM)" in fits
    assert "heap_caps_get_largest_free_block(MALLOC_CAP_SPIRAM)" in fits and "rc_memory_check(" in fits
    assert "dl::Model(" not in strip_comments_and_strings(backend.read_text()).replace(
        _function(backend, "new_model"), "")  # one constructor call, behind the check


def test_boot_banner_names_the_reset_reason():
    app = MAIN / "app_main.c"
    names = _function(app, "reset_reason_name")
    cases = re.findall(r"case ESP_RST_([A-Z_]+):\s*return \"([^\"]+)\"", (app.read_text()))
    assert [c for c, _ in cases] == RESET_REASONS, "every esp_reset_reason_t value, in the header's order"
    assert "default:" in names
    readable = dict(cases)
    assert (readable["POWERON"], readable["SW"], readable["PANIC"], readable["TASK_WDT"], readable["BROWNOUT"]) == (
        "power-on", "software", "panic", "task watchdog", "brownout")
    main = app.read_text().split("void app_main(void)")[1]  # with its strings: the banner's format
    assert re.search(r"snprintf\(s_banner,[^;]*; reset: %s\"[^;]*reset_reason_name\(esp_reset_reason\(\)\)\);",
                     main)
    doc = (ROOT / "docs" / "protocol.md").read_text()
    boot = doc[doc.index("### 0x85 BOOT"):doc.index("### 0x8F ERROR")]
    readme = (FIRMWARE / "README.md").read_text()
    for _, text in cases:
        if text != "not known to this firmware":
            assert f"`{text}`" in boot and f"`{text}`" in readme, text


# ESP-IDF / ESP-DL names in main/: function, type and macro families the app takes from ESP-IDF and ESP-DL.
IDF_NAME = re.compile(
    r"(?<![.>\w])(esp_[a-z0-9_]+|heap_caps_[a-z_]+|uart_[a-z_]+|usb_serial_jtag_[a-z_]+|x[A-Z][A-Za-z]+|pd[A-Z_]+"
    r"|port[A-Z_]+|task[A-Z_]+|ESP_[A-Z0-9_]+|SOC_[A-Z0-9_]+|MALLOC_CAP_[A-Z0-9_]+|UART_[A-Z0-9_]+"
    r"|(?:dl|fbs)::[A-Za-z_:]+|StreamBufferHandle_t|vprintf_like_t)\b")


def test_readme_lists_every_esp_idf_and_esp_dl_name_the_app_uses():
    readme = (FIRMWARE / "README.md").read_text()
    table = readme.split("## ESP-IDF and ESP-DL API used")[1].split("\nKconfig options set in")[0]
    listed: set[str] = set()
    prefixes: list[str] = []
    for cell in re.findall(r"`([^`]+)`", table):
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_:]*\*?", cell):
            (prefixes.append(word[:-1]) if word.endswith("*") else listed.add(word))
    missing = {}
    for path in sources(MAIN, (".c", ".cpp", ".h")):
        code = strip_comments_and_strings(path.read_text())
        for name in set(IDF_NAME.findall(code)):
            short = name.split("::")[-1]
            if name not in listed and short not in listed and not any(name.startswith(x) for x in prefixes):
                missing.setdefault(name, path.name)
    assert not missing, f"firmware/README.md's API table lacks {sorted(missing.items())}"
