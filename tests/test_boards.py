"""Board power profiles as data and the `estimate` power source (fast tier, no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.core.boards import detect_board, list_boards, load_board, read_device_compatible, read_device_model
from edgekit.device.power.base import SourceUnavailable
from edgekit.core.errors import ConfigError
from edgekit.device.power.estimate import EstimateSource, estimate_for_this_machine

BOARDS = Path(__file__).resolve().parent.parent / "boards"
SHIPPED = {"rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "generic-x86"}


def test_every_shipped_board_loads_and_validates():
    boards = {b.name: b for b in list_boards()}
    assert set(boards) >= SHIPPED
    for name in SHIPPED:
        b = load_board(name)
        assert b == boards[name] and b.path.stem == name
        assert 0 <= b.idle_watts < b.full_load_watts
        assert "approximate" in b.source and b.description
    assert boards["rpi4"].idle_watts == 2.7 and boards["rpi4"].full_load_watts == 6.4
    assert "Raspberry Pi 5" in boards["rpi5"].model_contains
    assert boards["generic-x86"].model_contains == ()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_full_load_must_exceed_idle(tmp_path):
    text = (BOARDS / "rpi4.toml").read_text().replace("full_load_watts = 6.4", "full_load_watts = 2.7")
    p = _write(tmp_path, "rpi4", text)
    with pytest.raises(ConfigError) as e:
        load_board(str(p))
    msg = str(e.value)
    assert str(p) in msg and "key 'full_load_watts'" in msg and "greater than idle_watts" in msg


def test_negative_idle_and_unknown_key(tmp_path):
    text = (BOARDS / "rpi5.toml").read_text()
    p = _write(tmp_path, "rpi5", text.replace("idle_watts = 2.7", "idle_watts = -1.0"))
    with pytest.raises(ConfigError, match=r"key 'idle_watts': got -1.0; expected a number in \[0.0, inf\]"):
        load_board(str(p))
    p = _write(tmp_path, "rpi5", text.replace("model_contains =", "model_contain ="))
    with pytest.raises(ConfigError, match=r"key 'match.model_contain': unknown key \(did you mean 'model_contains'"):
        load_board(str(p))


@pytest.mark.parametrize(
    "model, expected",
    [
        ("Raspberry Pi 5 Model B Rev 1.0\x00", "rpi5"),
        ("Raspberry Pi 4 Model B Rev 1.4\x00", "rpi4"),
        ("Raspberry Pi Compute Module 4 Rev 1.1", "rpi4"),
        ("NVIDIA Jetson Nano Developer Kit\x00", "jetson-nano"),
        ("NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin-nano"),
        ("Pine64 RockPro64 v2.1\x00", None),
        ("", None),
        ("\x00", None),
        (None, None),
    ],
)
def test_detect_board(model, expected):
    b = detect_board(model)
    assert (b.name if b else None) == expected


def test_read_device_model(tmp_path):
    assert read_device_model(tmp_path) is None  # no device tree (x86)
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert read_device_model(tmp_path) == "Raspberry Pi 5 Model B Rev 1.0"
    assert read_device_model(str(tmp_path)) == "Raspberry Pi 5 Model B Rev 1.0"
    assert detect_board(read_device_model(tmp_path)).name == "rpi5"


@pytest.mark.parametrize("fraction, watts", [(0.0, 2.7), (0.5, 4.55), (1.0, 6.4), (1.3, 6.4), (-0.2, 2.7)])
def test_estimate_watts_from_cpu_fraction(fraction, watts):
    src = EstimateSource(load_board("rpi4"), cpu_fraction=lambda: fraction)
    sample = src.read()
    assert sample.watts == pytest.approx(watts, abs=1e-12) and sample.joules is None
    assert src.name == "estimate" and src.measured is False
    d = src.describe()
    assert d["measured"] is False and d["source"] == "estimate"
    assert d["scope"].startswith("estimate: CPU utilisation x rpi4 profile (2.7 W idle, 6.4 W full load; approximate")
    assert d["scope"].endswith(") - not a measurement")
    assert "rpi4" in d["detail"]


def test_estimate_for_this_machine_detects_or_falls_back(tmp_path):
    src = estimate_for_this_machine(model_text="Raspberry Pi 5 Model B Rev 1.0\x00", cpu_fraction=lambda: 1.0)
    assert src.board.name == "rpi5" and src.read().watts == 7.0
    assert "Raspberry Pi 5 Model B Rev 1.0" in src.detail and src.measured is False

    (tmp_path / "model").write_bytes(b"NVIDIA Jetson Nano Developer Kit\x00")
    src = estimate_for_this_machine(device_tree_root=tmp_path, cpu_fraction=lambda: 0.0)
    assert src.board.name == "jetson-nano" and src.read().watts == src.board.idle_watts

    src = estimate_for_this_machine(device_tree_root=tmp_path / "absent", cpu_fraction=lambda: 0.0, arch="x86_64")
    assert src.board.name == "generic-x86" and src.read().watts == 10.0
    assert "no board detected on x86_64; generic-x86 profile" in src.detail


@pytest.mark.parametrize("arch", ["aarch64", "armv7l", "x86_64"])
def test_unknown_board_never_borrows_the_x86_profile(tmp_path, arch):
    (tmp_path / "model").write_bytes(b"Pine64 RockPro64 v2.1\x00")
    (tmp_path / "compatible").write_bytes(b"pine64,rockpro64-v2.1\x00rockchip,rk3399\x00")
    with pytest.raises(SourceUnavailable) as err:
        estimate_for_this_machine(device_tree_root=tmp_path, cpu_fraction=lambda: 0.0, arch=arch)
    said = str(err.value)
    assert f"unrecognised {arch} board" in said and "Pine64 RockPro64 v2.1" in said and "rockchip,rk3399" in said
    assert "x86" not in said.replace(arch, "") and "--board" in said
    with pytest.raises(SourceUnavailable, match="unrecognised aarch64 board \\(no device-tree model"):
        estimate_for_this_machine(device_tree_root=tmp_path / "none", cpu_fraction=lambda: 0.0, arch="aarch64")


def test_board_detected_from_the_soc_when_the_model_string_is_unknown(tmp_path):
    (tmp_path / "model").write_bytes(b"Some vendor carrier board with a CM5\x00")
    (tmp_path / "compatible").write_bytes(b"vendor,carrier\x00raspberrypi,5-compute-module\x00brcm,bcm2712\x00")
    assert read_device_compatible(tmp_path)[-1] == "brcm,bcm2712"
    src = estimate_for_this_machine(device_tree_root=tmp_path, cpu_fraction=lambda: 0.0, arch="aarch64")
    assert src.board.name == "rpi5" and "brcm,bcm2712" in src.detail


def test_added_board_found_via_env_path(tmp_path, monkeypatch):
    extra = tmp_path / "myboards"
    extra.mkdir()
    _write(extra, "my-sbc", 'name = "my-sbc"\ndescription = "my SBC"\nidle_watts = 1.0\nfull_load_watts = 3.0\n'
                          'source = "approximate: my own USB meter"\n[match]\nmodel_contains = ["My SBC"]\n')
    monkeypatch.setenv("EDGEKIT_BOARDS_PATH", str(extra))
    assert "my-sbc" in {b.name for b in list_boards()}
    assert load_board("my-sbc").full_load_watts == 3.0
    assert detect_board("My SBC rev 2\x00").name == "my-sbc"
    src = estimate_for_this_machine(model_text="My SBC rev 2", cpu_fraction=lambda: 0.5)
    assert src.read().watts == 2.0

    # the same profile through boards_dir_root, without the env var
    monkeypatch.delenv("EDGEKIT_BOARDS_PATH")
    src = estimate_for_this_machine(boards_dir_root=extra, model_text="My SBC rev 2", cpu_fraction=lambda: 1.0)
    assert src.board.name == "my-sbc" and src.read().watts == 3.0
    src = estimate_for_this_machine(boards_dir_root=extra, model_text=None, device_tree_root=tmp_path / "none",
                                    cpu_fraction=lambda: 0.0, arch="x86_64")
    assert src.board.name == "generic-x86"


def _pi_tree(root, model: bytes):
    tree = root / "proc" / "device-tree"
    tree.mkdir(parents=True)
    (tree / "model").write_bytes(model)
    return root


def test_power_auto_on_a_pi5_picks_the_pmic_measured(tmp_path):
    from test_power_sources import PI5_OUTPUT, PI5_WATTS

    from edgekit.core.targets import load_target
    from edgekit.device.power.probe import Machine, choose

    machine = Machine.under(_pi_tree(tmp_path, b"Raspberry Pi 5 Model B Rev 1.0\x00"), vcgencmd=lambda: PI5_OUTPUT,
                            cpu_fraction=lambda: 0.0, battery_info=lambda: None, arch="aarch64")
    lines = []
    source = choose("auto", machine, prefer=load_target("arm-cpu").data["power"]["prefer"], log=lines.append)
    assert source.name == "rpi-pmic" and source.measured is True
    assert source.read().watts == pytest.approx(PI5_WATTS, rel=1e-9)
    assert lines == [f"power: using rpi-pmic (measured): {source.scope}"]


def test_power_auto_on_an_unknown_arm_board_turns_energy_off_and_never_says_x86(tmp_path):
    from edgekit.device.power.probe import Machine, choose, probe_all

    machine = Machine.under(_pi_tree(tmp_path, b"Pine64 RockPro64 v2.1\x00"), vcgencmd=lambda: "",
                            cpu_fraction=lambda: 0.0, battery_info=lambda: None, arch="aarch64")
    lines = []
    assert choose("auto", machine, log=lines.append) is None
    assert "generic-x86" not in "\n".join(lines)  # (the RAPL line may say RAPL needs an x86 CPU)
    assert "x86" not in [line for line in lines if line.startswith("power: skipped estimate")][0]
    assert lines[-1] == "power: no source works here (see the reasons above): energy figures are off"
    estimate = [reason for name, source, reason in probe_all(machine) if name == "estimate"][0]
    assert "unrecognised aarch64 board" in estimate
    with_board = choose("estimate", machine, board="rpi4", log=lines.append)
    assert with_board.board.name == "rpi4" and with_board.measured is False
