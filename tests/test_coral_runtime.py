"""Fast tier: `edgekit coral status` and edgekit.device.coral_runtime on fake sysfs trees with a fake
library loader: USB before / after the runtime's first use, PCIe, none, library missing, present but
not loadable, loadable, and the Debian package's TensorFlow version."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.device import coral_runtime
from edgekit.device.coral_runtime import find_devices, installed_package, probe_runtime, status
from edgekit.device.delegation import EDGETPU_DOC, not_loaded
from tests.fakes import FakeLibraryLoader, fake_usb_device

LIB_DIR = "usr/lib/aarch64-linux-gnu"


def _edgetpu_symbols(version=b"BuildLabel(COMPILER=12.2.0), RuntimeVersion(14)"):
    def edgetpu_version():
        return version

    return {"tflite_plugin_create_delegate": lambda *a: None, "edgetpu_version": edgetpu_version}


def _install_library(root, package_version=None, name="libedgetpu.so.1"):
    lib = root / LIB_DIR / name
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(b"\x7fELF")
    if package_version:
        status_file = root / "var/lib/dpkg/status"
        status_file.parent.mkdir(parents=True, exist_ok=True)
        status_file.write_text("Package: libusb-1.0-0\nStatus: install ok installed\nVersion: 2:1.0.26-1\n\n"
                               f"Package: libedgetpu1-std\nStatus: install ok installed\nArchitecture: arm64\n"
                               f"Version: {package_version}\n")
    return str(lib)


def _litert(name):
    return {"ai-edge-litert": "2.3.0"}.get(name)


def test_usb_accelerator_before_and_after_first_use(tmp_path):
    fake_usb_device(tmp_path, "1-1", "1d6b", "0002", speed="480")  # a hub: not an Edge TPU
    fake_usb_device(tmp_path, "2-1", "1a6e", "089a", speed="5000")
    devices, why = find_devices(tmp_path)
    assert why == "" and len(devices) == 1
    d = devices[0]
    assert (d.kind, d.where, d.ids, d.link) == ("usb", "2-1", "1a6e:089a", "usb3")
    assert "not yet initialised" in d.state and "firmware" in d.line()
    fake_usb_device(tmp_path, "2-1", "18D1", "9302", speed="480")  # after first use, re-enumerated (on USB 2 here)
    (d,), _ = find_devices(tmp_path)
    assert (d.ids, d.state, d.link) == ("18d1:9302", "initialised", "usb2")
    assert d.line() == "USB accelerator at 2-1 (18d1:9302, initialised; usb2)"


def test_pcie_edge_tpu_with_and_without_its_driver(tmp_path):
    pci = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    pci.mkdir(parents=True)
    (pci / "vendor").write_text("0x1ac1\n")
    (pci / "device").write_text("0x089a\n")
    devices, why = find_devices(tmp_path)
    assert devices == [] and "0000:01:00.0" in why and "driver (gasket + apex) is not loaded" in why
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/apex_0").write_text("")
    (tmp_path / "sys/class/apex/apex_0").mkdir(parents=True)  # listed in both places: one device
    devices, why = find_devices(tmp_path)
    assert why == "" and [(d.kind, d.where, d.link) for d in devices] == [("pcie", "/dev/apex_0", "pcie")]


def test_no_edge_tpu_says_where_it_looked(tmp_path):
    fake_usb_device(tmp_path, "1-1", "046d", "c077")
    devices, why = find_devices(tmp_path)
    assert devices == []
    assert why.startswith("no Edge TPU found (looked at USB: 1 devices") and "/dev/apex_*" in why


def test_library_missing(tmp_path):
    loader = FakeLibraryLoader()
    rt = probe_runtime(tmp_path, loader=loader, version_of=_litert)
    assert not rt.found and not rt.loadable and not rt.usable
    assert "libedgetpu.so.1 not found" in rt.reason and loader.asked == ["libedgetpu.so.1"]  # then the linker's path
    assert rt.litert == "ai-edge-litert 2.3.0"


def test_library_present_but_load_fails(tmp_path):
    path = _install_library(tmp_path)
    loader = FakeLibraryLoader(broken={path: "libusb-1.0.so.0: cannot open shared object file"})
    rt = probe_runtime(tmp_path, loader=loader, version_of=_litert)
    assert rt.found and not rt.loadable and not rt.usable and rt.library == path
    assert rt.reason == f"{path} is there but cannot be loaded: libusb-1.0.so.0: cannot open shared object file"
    assert loader.asked == [path, "libedgetpu.so.1"]  # then the dynamic linker's own search, which fails too
    loader = FakeLibraryLoader({"libedgetpu.so.1": _edgetpu_symbols()}, broken={path: "wrong ELF class"})
    rt = probe_runtime(tmp_path, loader=loader, version_of=_litert)
    assert rt.usable and rt.library == "libedgetpu.so.1"  # the linker found one that loads: that one is used


def test_library_without_the_delegate_entry_point(tmp_path):
    path = _install_library(tmp_path)
    rt = probe_runtime(tmp_path, loader=FakeLibraryLoader({path: {"edgetpu_version": lambda: b"x"}}), version_of=_litert)
    assert rt.loadable and not rt.usable and "no tflite_plugin_create_delegate" in rt.reason


def test_loadable_library_built_against_a_recent_tensorflow_is_usable(tmp_path):
    path = _install_library(tmp_path, "16.0tf2.19.1-1.bookworm")
    rt = probe_runtime(tmp_path, loader=FakeLibraryLoader({path: _edgetpu_symbols()}), version_of=_litert)
    assert rt.usable and rt.loadable and rt.built_against_tf == "2.19.1"
    assert rt.package == "libedgetpu1-std 16.0tf2.19.1-1.bookworm"
    assert rt.version == "BuildLabel(COMPILER=12.2.0), RuntimeVersion(14)"
    assert rt.reason == "loadable, built against TensorFlow 2.19.1 (package libedgetpu1-std 16.0tf2.19.1-1.bookworm)"


def test_googles_original_build_is_flagged_and_no_litert_is_not_usable(tmp_path):
    path = _install_library(tmp_path, "16.0")
    loader = FakeLibraryLoader({path: _edgetpu_symbols()})
    rt = probe_runtime(tmp_path, loader=loader, version_of=_litert)
    assert rt.loadable and not rt.usable and rt.built_against_tf == "2.5"
    assert "reported to crash with TFLite newer than 2.11" in rt.reason
    _install_library(tmp_path, "15.0")
    rt = probe_runtime(tmp_path, loader=loader, version_of=_litert)
    assert not rt.usable and rt.built_against_tf == "before 2.5" and "TensorFlow before 2.5" in rt.reason
    _install_library(tmp_path, "16.0tf2.17.1-1")
    rt = probe_runtime(tmp_path, loader=loader, version_of=lambda name: None)
    assert not rt.usable and "no LiteRT is installed: pip install ai-edge-litert" in rt.reason


def test_unknown_build_is_usable_but_says_what_is_not_known(tmp_path):
    path = _install_library(tmp_path)  # copied in by hand: no Debian package
    rt = probe_runtime(tmp_path, loader=FakeLibraryLoader({path: _edgetpu_symbols()}), version_of=_litert)
    assert rt.usable and rt.built_against_tf == "" and "not known until a model runs" in rt.reason


def test_fork_versions_without_a_tf_tag_are_unknown(tmp_path):
    _install_library(tmp_path, "16.0pp3")  # an early fork build: the TF release is not in the version
    assert installed_package(tmp_path) == ("libedgetpu1-std 16.0pp3", "")


def test_dpkg_status_ignores_removed_packages(tmp_path):
    f = tmp_path / "var/lib/dpkg/status"
    f.parent.mkdir(parents=True)
    f.write_text("Package: libedgetpu1-max\nStatus: deinstall ok config-files\nVersion: 16.0\n")
    assert installed_package(tmp_path) == ("", "")


def test_status_lines_point_at_the_doc(tmp_path):
    s = status(tmp_path, loader=FakeLibraryLoader(), version_of=_litert)
    text = s.lines()
    assert text.splitlines()[0].startswith("Edge TPU: no Edge TPU found")
    assert "runtime: libedgetpu.so.1 not installed; LiteRT: ai-edge-litert 2.3.0" in text
    assert f"see {EDGETPU_DOC}" in text and s.as_dict()["doc"] == EDGETPU_DOC


def test_cli_status_text_and_json(tmp_path, monkeypatch):
    fake_usb_device(tmp_path, "2-1", "18d1", "9302")
    path = _install_library(tmp_path, "16.0tf2.17.1-1")
    loader = FakeLibraryLoader({path: _edgetpu_symbols()})
    monkeypatch.setattr(coral_runtime, "_ctypes_loader", loader)  # the module's default loader, not a builtin
    out = CliRunner().invoke(cli, ["coral", "status", "--root", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("Edge TPU: USB accelerator at 2-1 (18d1:9302, initialised; usb3)\n")
    assert f"runtime: {path} usable" in out.output
    out = CliRunner().invoke(cli, ["coral", "status", "--json", "--root", str(tmp_path)])
    got = json.loads(out.output)
    assert got["devices"][0]["ids"] == "18d1:9302" and got["runtime"]["usable"] is True
    assert got["runtime"]["built_against_tf"] == "2.17.1" and got["doc"] == EDGETPU_DOC


def test_serve_refusal_for_a_missing_edgetpu_runtime_points_at_the_doc():
    d = not_loaded("edgetpu", "libedgetpu.so.1", "library 'libedgetpu.so.1' could not be loaded (...)")
    assert d.refusal("coral").endswith(f"--allow-cpu-fallback to run on the CPU anyway "
                                       f"(check: edgekit coral status; install: {EDGETPU_DOC})")
    assert not_loaded("gpu", "libgpu.so", "gone").hint() == ""


def test_edgetpu_delegate_errors_become_reasons_not_tracebacks(tmp_path):
    from edgekit.device.tflite_model import make_interpreter
    from tests.test_delegation import FakeLite

    # ai-edge-litert 2.3 raises AttributeError for a library without tflite_plugin_create_delegate
    # (seen under aarch64 emulation, docs/coral.md) and an empty ValueError when libedgetpu opens no device
    lite = FakeLite(error=AttributeError("libc.so.6: undefined symbol: tflite_plugin_create_delegate"))
    _, d = make_interpreter(tmp_path / "m.tflite", 0, "edgetpu", "libc.so.6", lite=lite)
    assert not d.loaded and "undefined symbol: tflite_plugin_create_delegate" in d.reason
    _, d = make_interpreter(tmp_path / "m.tflite", 0, "edgetpu", "libedgetpu.so.1", lite=FakeLite(error=ValueError()))
    assert d.reason == "'libedgetpu.so.1' loaded but opened no Edge TPU (none attached, or no permission to open it)"
    assert d.refusal("coral").endswith(f"install: {EDGETPU_DOC})")


def test_cpu_fallback_warning_for_edgetpu_points_at_the_doc():
    from edgekit.device.delegation import settle

    d = not_loaded("edgetpu", "libedgetpu.so.1", "gone")
    warning = settle(d, "coral", allow_cpu_fallback=True)
    assert d.cpu_fallback and warning.startswith("WARNING: delegate edgetpu: not loaded, gone (all on CPU)")
    assert warning.endswith(f"(check: edgekit coral status; install: {EDGETPU_DOC})")
