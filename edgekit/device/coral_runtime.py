"""Is an Edge TPU attached here, and is a runtime present that LiteRT can load as its delegate?

Each answer carries its reason. Hardware is read from an injected root (default "/"), never assumed:
  USB accelerator  /sys/bus/usb/devices/*/idVendor,idProduct: 1a6e:089a before the runtime's first use
                   (no firmware yet), 18d1:9302 after; `speed` (Mbit/s) tells USB 2 (480) from USB 3 (5000+)
  PCIe / M.2       /dev/apex_* or /sys/class/apex/* (the gasket + apex kernel driver); a 1ac1:089a PCI function
                   without them means the card is there but its driver is not loaded
The runtime is libedgetpu.so.1, opened by an injected loader (default ctypes.CDLL): found, loadable, and
exporting `tflite_plugin_create_delegate` (what LiteRT's load_delegate calls). Loading the library does
not prove the delegate ABI matches the installed LiteRT (libedgetpu compiles TFLite's C structs in and
imports no TFLite symbol, so a mismatch shows only at run time); the Debian package version, which
names the TensorFlow release it was built against (e.g. 16.0tf2.19.1-1), is read from dpkg's status file
and Google's original build (TF 2.5) is flagged: see docs/coral.md#runtime-on-raspberry-pi-os.
May import: stdlib (ctypes inside functions), edgekit.core, edgekit.device.delegation.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.device.delegation import EDGETPU_DOC as DOC

LIBRARY = "libedgetpu.so.1"
USB_IDS = {"1a6e:089a": "not yet initialised: the runtime loads its firmware on first use",
           "18d1:9302": "initialised"}
PCI_ID = ("0x1ac1", "0x089a")
LIBRARY_DIRS = ("usr/lib/aarch64-linux-gnu", "usr/lib/arm-linux-gnueabihf", "usr/lib/x86_64-linux-gnu",
                "usr/lib", "usr/local/lib", "lib/aarch64-linux-gnu", "lib")
PACKAGES = ("libedgetpu1-std", "libedgetpu1-max", "libedgetpu1-legacy-std", "libedgetpu1-legacy-max")
OLDEST_WORKING_TF = (2, 12)  # builds against older TF are reported to crash with newer TFLite (docs/coral.md)


@dataclass
class EdgeTpu:
    """One Edge TPU found in sysfs / /dev."""

    kind: str  # "usb" or "pcie"
    where: str  # USB port path (e.g. "2-1") or device node (e.g. "/dev/apex_0")
    ids: str = ""  # vendor:product
    state: str = ""
    link: str = ""  # usb2 / usb3 / pcie: the accelerators/edgetpu.toml link names

    def line(self) -> str:
        if self.kind == "usb":
            return f"USB accelerator at {self.where} ({self.ids}, {self.state}; {self.link or 'link speed unknown'})"
        return f"PCIe Edge TPU at {self.where}" + (f" ({self.state})" if self.state else "")


@dataclass
class Runtime:
    """What was found of the Edge TPU runtime and the LiteRT that would load it."""

    library: str = ""  # the path (or name) that was loaded or tried
    found: bool = False
    loadable: bool = False
    usable: bool = False
    package: str = ""  # e.g. "libedgetpu1-std 16.0tf2.19.1-1"
    built_against_tf: str = ""
    version: str = ""  # edgetpu_version() of the loaded library
    litert: str = ""  # e.g. "ai-edge-litert 2.3.0"
    reason: str = ""


@dataclass
class CoralStatus:
    devices: list[EdgeTpu] = field(default_factory=list)
    device_reason: str = ""
    runtime: Runtime = field(default_factory=Runtime)

    def as_dict(self) -> dict:
        return {**asdict(self), "doc": DOC}

    def lines(self) -> str:
        rt = self.runtime
        head = "; ".join(d.line() for d in self.devices) if self.devices else self.device_reason
        run = (f"runtime: {rt.library} {'usable' if rt.usable else 'NOT usable'}" if rt.found else
               f"runtime: {Path(rt.library).name} not installed")
        tail = [f"  {rt.reason}"] + ([f"  library version: {rt.version}"] if rt.version else [])
        if not rt.usable:
            tail.append(f"  see {DOC}")
        return "\n".join([f"Edge TPU: {head}", run + f"; LiteRT: {rt.litert or 'not installed'}"]
                         + tail)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def _usb_link(speed: str) -> str:
    try:
        mbits = float(speed)
    except ValueError:
        return ""
    return "usb3" if mbits >= 5000 else "usb2"


def find_devices(root: Path | str = "/") -> tuple[list[EdgeTpu], str]:
    """Edge TPUs under `root`, and the reason when there are none."""
    root = Path(root)
    found = []
    usb = sorted((root / "sys/bus/usb/devices").glob("*"))
    for dev in usb:
        ids = f"{_read(dev / 'idVendor').lower()}:{_read(dev / 'idProduct').lower()}"
        if ids in USB_IDS:
            found.append(EdgeTpu("usb", dev.name, ids, USB_IDS[ids], _usb_link(_read(dev / "speed"))))
    apex = sorted({p.name for p in (root / "dev").glob("apex_*")} | {p.name for p in (root / "sys/class/apex").glob("*")})
    found += [EdgeTpu("pcie", f"/dev/{name}", state="apex driver loaded", link="pcie") for name in apex]
    if found:
        return found, ""
    pci = [d.name for d in sorted((root / "sys/bus/pci/devices").glob("*"))
           if (_read(d / "vendor").lower(), _read(d / "device").lower()) == PCI_ID]
    if pci:
        return [], (f"a PCIe Edge TPU is present ({pci[0]}, 1ac1:089a) but there is no /dev/apex_*: its kernel driver "
                    "(gasket + apex) is not loaded")
    return [], (f"no Edge TPU found (looked at USB: {len(usb)} devices, none 1a6e:089a or 18d1:9302; "
                "PCIe: no /dev/apex_*, /sys/class/apex or 1ac1:089a PCI function)")


def installed_package(root: Path | str = "/") -> tuple[str, str]:
    """("libedgetpu1-std 16.0tf2.19.1-1", "2.19.1") from dpkg's status file, ("", "") when none is installed.
    A plain "16.0" (Google's last own package) was built against TF 2.5; 15.0 and older, "before 2.5"."""
    text = _read(Path(root) / "var/lib/dpkg/status")
    for block in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", block, re.M))
        if fields.get("Package") in PACKAGES and "installed" in fields.get("Status", "").split():
            version = fields.get("Version", "")
            tf = re.search(r"tf(\d+\.\d+(?:\.\d+)?)", version)
            if tf:
                return f"{fields['Package']} {version}", tf.group(1)
            google = re.fullmatch(r"(\d+)\.\d+", version)  # Google's own: 16.0 against TF 2.5, older before it
            built = "" if not google else ("2.5" if int(google.group(1)) >= 16 else "before 2.5")
            return f"{fields['Package']} {version}", built
    return "", ""


def _library_dirs() -> list[str]:
    """LIBRARY_DIRS with this machine's multiarch folder (e.g. usr/lib/aarch64-linux-gnu) first."""
    import sysconfig

    arch = sysconfig.get_config_var("MULTIARCH")
    return list(dict.fromkeys(([f"usr/lib/{arch}"] if arch else []) + list(LIBRARY_DIRS)))


def locate(root: Path | str = "/", name: str = LIBRARY) -> str | None:
    """The library's path under `root` in the usual library folders, or None."""
    if "/" in name:
        path = Path(root) / name.lstrip("/")
        return str(path) if path.exists() else None
    for folder in _library_dirs():
        path = Path(root) / folder / name
        if path.exists():
            return str(path)
    return None


def _load_first(loader, candidates: list) -> tuple[str, object, str]:
    """(what loaded, its handle, "") for the first candidate the loader opens (a file found in a library
    folder, then the bare name through the dynamic linker's own search); else (the first candidate
    tried, None, its error)."""
    tried = [c for c in candidates if c]
    first_error = ""
    for candidate in tried:
        try:
            return candidate, loader(candidate), ""
        except OSError as exc:
            first_error = first_error or str(exc)
    return tried[0], None, first_error


def _ctypes_loader(path: str):
    import ctypes

    return ctypes.CDLL(path)


def _library_version(handle) -> str:
    try:
        import ctypes

        fn = handle.edgetpu_version
        fn.restype = ctypes.c_char_p
        raw = fn()
    except Exception:  # an older build without the C API, or a fake without it: no version, not an error
        return ""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")


def litert_version(version_of=None) -> str:
    """"ai-edge-litert 2.3.0" (or the deprecated tflite-runtime), "" when neither is installed."""
    if version_of is None:
        from importlib import metadata

        def version_of(name):
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return None
    for name in ("ai-edge-litert", "tflite-runtime"):
        v = version_of(name)
        if v:
            return f"{name} {v}"
    return ""


def probe_runtime(root: Path | str = "/", name: str = LIBRARY, loader=None, version_of=None) -> Runtime:
    """Find and load the Edge TPU library (see module docstring); `loader(path)` returns a handle whose
    attributes are the library's symbols or raises OSError."""
    loader = loader or _ctypes_loader
    rt = Runtime(litert=litert_version(version_of))
    rt.package, rt.built_against_tf = installed_package(root)
    path = locate(root, name)
    rt.library, handle, error = _load_first(loader, [path] if path == name else [path, name])
    if handle is None:
        rt.found = path is not None
        rt.reason = (f"{rt.library} is there but cannot be loaded: {error}" if rt.found else
                     f"{name} not found (looked in /{', /'.join(_library_dirs())} and the linker's path)")
        return rt
    rt.found = rt.loadable = True
    if not hasattr(handle, "tflite_plugin_create_delegate"):
        rt.reason = f"{rt.library} loads but has no tflite_plugin_create_delegate: not an Edge TPU delegate library"
        return rt
    rt.version = _library_version(handle)
    rt.usable, rt.reason = _judge(rt)
    return rt


def _judge(rt: Runtime) -> tuple[bool, str]:
    """Usable or not, and why, for a library that loaded and exports the delegate entry point."""
    built = f" (package {rt.package})" if rt.package else ""
    if not rt.litert:
        return False, f"the library loads{built}, but no LiteRT is installed: pip install ai-edge-litert"
    if rt.built_against_tf:
        tf = tuple(int(x) for x in re.findall(r"\d+", rt.built_against_tf)[:2])
        if rt.built_against_tf.startswith("before") or tf < OLDEST_WORKING_TF:
            return False, (f"the library loads but was built against TensorFlow {rt.built_against_tf}{built}: such "
                           f"builds are reported to crash with TFLite newer than 2.11 ({rt.litert}); install a "
                           "libedgetpu built against TF 2.17 or newer")
        return True, f"loadable, built against TensorFlow {rt.built_against_tf}{built}"
    return True, (f"loadable; the TensorFlow release it was built against is unknown (no libedgetpu1 Debian "
                  f"package found), so whether it matches {rt.litert} is not known until a model runs")


def status(root: Path | str = "/", name: str = LIBRARY, loader=None, version_of=None) -> CoralStatus:
    devices, why = find_devices(root)
    return CoralStatus(devices, why, probe_runtime(root, name, loader, version_of))
