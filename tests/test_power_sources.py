"""Fast tier: the sysfs / command power sources on fake trees built in tmp_path and recorded
command output (no patching): RAPL, hwmon INA chips, Jetson INA3221, power_supply, Pi 5 PMIC."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.device.power.base import SourceUnavailable
from edgekit.device.power.hwmon import HwmonSource
from edgekit.device.power.jetson import JetsonSource
from edgekit.device.power.pmic import RpiPmicSource, parse_pmic_adc, vcgencmd_runner
from edgekit.device.power.rapl import RaplSource
from edgekit.device.power.supply import PowerSupplySource, battery_percent

TIGHT = 1e-12
MAX_UJ = 262143328850


def write(d: Path, **files) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (d / name).write_text(f"{value}\n")
    return d


# RAPL ---------------------------------------------------------------------------------------

def rapl_zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    return write(root / zone, name=name, energy_uj=energy_uj, max_energy_range_uj=max_uj)


def test_rapl_sums_packages_and_ignores_subzones(tmp_path):
    write(tmp_path / "intel-rapl", enabled=1)  # the control-type dir: no counter
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    rapl_zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    rapl_zone(tmp_path, "intel-rapl:0:0", "core", 700_000)  # as in real sysfs: subzones listed at the root too
    rapl_zone(tmp_path, "intel-rapl:0:2", "dram", 100_000)
    rapl_zone(tmp_path / "intel-rapl:0", "intel-rapl:0:1", "uncore", 50_000)
    rapl_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 9_000_000)
    src = RaplSource(tmp_path)
    assert src.name == "rapl" and src.measured
    assert src.scope == "CPU package(s) via RAPL (not the whole machine)"
    assert "intel-rapl:0 (package-0) + intel-rapl:1 (package-1)" in src.detail
    first = src.read()
    assert first.joules == 0.0 and first.watts is None
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 3_500_000)  # +2.5 J
    rapl_zone(tmp_path, "intel-rapl:1", "package-1", 5_250_000)  # +0.25 J
    for zone, name in (("intel-rapl:0:0", "core"), ("intel-rapl:0:2", "dram"), ("intel-rapl-mmio:0", "package-0")):
        rapl_zone(tmp_path, zone, name, 99_000_000)
    assert src.read().joules == pytest.approx(2.75, rel=TIGHT)


def test_rapl_wraparound_mid_window_adds_the_true_amount(tmp_path):
    start = MAX_UJ - 400_000
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", start)
    src = RaplSource(tmp_path)
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", MAX_UJ - 100_000)  # +0.3 J, near the top
    assert src.read().joules == pytest.approx(0.3, rel=TIGHT)
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 600_000)  # wrapped: +100_000 to the top, +600_000 after
    assert src.read().joules == pytest.approx(0.3 + 0.7, rel=TIGHT)
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_600_000)
    assert src.read().joules == pytest.approx(2.0, rel=TIGHT)


def test_rapl_psys_is_used_alone(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    rapl_zone(tmp_path, "intel-rapl:1", "psys", 2_000_000)
    src = RaplSource(tmp_path)
    assert src.scope.startswith("platform (psys)") and "not wall power" in src.scope
    assert "intel-rapl:1 (psys)" in src.detail and "package-0" not in src.detail
    src.read()
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 9_000_000)
    rapl_zone(tmp_path, "intel-rapl:1", "psys", 6_000_000)
    assert src.read().joules == pytest.approx(4.0, rel=TIGHT)


def test_rapl_amd_style_zone_is_accepted(tmp_path):
    rapl_zone(tmp_path, "amd-rapl:0", "package-0", 10)
    src = RaplSource(str(tmp_path))
    rapl_zone(tmp_path, "amd-rapl:0", "package-0", 1_000_010)
    src.read()
    assert src.read().joules == pytest.approx(1.0, rel=TIGHT)


def test_rapl_without_zones_is_unavailable(tmp_path):
    write(tmp_path / "intel-rapl", enabled=1)
    with pytest.raises(SourceUnavailable, match="no RAPL zones"):
        RaplSource(tmp_path)
    with pytest.raises(SourceUnavailable, match="no RAPL zones"):
        RaplSource(tmp_path / "missing")


def test_rapl_unreadable_counter_names_the_file_and_the_fix(tmp_path):
    zone = write(tmp_path / "intel-rapl:0", name="package-0", max_energy_range_uj=MAX_UJ)
    if os.geteuid() == 0:  # root reads a mode-000 file anyway: provoke the OSError with a directory
        (zone / "energy_uj").mkdir()
        with pytest.raises(SourceUnavailable, match="cannot read .*energy_uj"):
            RaplSource(tmp_path)
    else:
        (zone / "energy_uj").write_text("123\n")
        (zone / "energy_uj").chmod(0)
        try:
            with pytest.raises(SourceUnavailable) as exc:
                RaplSource(tmp_path)
        finally:
            (zone / "energy_uj").chmod(stat.S_IRUSR | stat.S_IWUSR)
        assert "permission denied" in str(exc.value) and str(zone / "energy_uj") in str(exc.value)
        assert "run as root" in str(exc.value) and "chmod a+r" in str(exc.value)


# hwmon --------------------------------------------------------------------------------------

def test_hwmon_ina226_power1_input(tmp_path):
    write(tmp_path / "hwmon0", name="coretemp", temp1_input=45000)
    write(tmp_path / "hwmon1", name="ina226", power1_input=2_345_000, in1_input=5012, curr1_input=467)
    src = HwmonSource(tmp_path)
    assert src.name == "hwmon" and src.read().watts == pytest.approx(2.345, rel=TIGHT)
    assert "power1_input" in src.detail and "rail ina226" in src.scope


def test_hwmon_single_channel_without_power_file_uses_v_times_i(tmp_path):
    write(tmp_path / "hwmon2", name="ina219", in1_input=5100, curr1_input=800)
    write(tmp_path / "hwmon10", name="ina219", in1_input=3300, curr1_input=100)
    src = HwmonSource(tmp_path)
    assert src.read().watts == pytest.approx(5.1 * 0.8, rel=TIGHT)  # hwmon2 before hwmon10
    assert "first of 2 devices" in src.detail and "hwmon10" in src.detail


def ina3221(root: Path, labels=("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")) -> Path:
    files = {"name": "ina3221"}
    for k, (label, mv, ma) in enumerate(zip(labels, (5000, 4980, 4990), (1200, 400, 300)), start=1):
        if label:
            files[f"in{k}_label"] = label
        files.update({f"in{k}_input": mv, f"curr{k}_input": ma, f"in{k + 3}_input": 1})
    return write(root, **files)


def test_ina3221_default_is_the_total_input_rail(tmp_path):
    ina3221(tmp_path / "hwmon3")
    src = HwmonSource(tmp_path)
    assert src.read().watts == pytest.approx(5.0 * 1.2, rel=TIGHT)
    assert src.scope.startswith("input rail VDD_IN") and "used alone" in src.detail


def test_ina3221_choose_by_label_case_insensitive(tmp_path):
    ina3221(tmp_path / "hwmon3")
    src = HwmonSource(tmp_path, channels=["vdd_cpu_gpu_cv", "VDD_SOC"])
    assert src.read().watts == pytest.approx(4.98 * 0.4 + 4.99 * 0.3, rel=TIGHT)
    assert "sum of rails VDD_CPU_GPU_CV + VDD_SOC" in src.scope


def test_ina3221_unknown_label_lists_the_available_ones(tmp_path):
    ina3221(tmp_path / "hwmon3")
    with pytest.raises(SourceUnavailable) as exc:
        HwmonSource(tmp_path, channels=["VDD_GPU"])
    assert "'VDD_GPU'" in str(exc.value)
    assert all(label in str(exc.value) for label in ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"))


def test_ina3221_without_total_label_sums_all_channels(tmp_path):
    ina3221(tmp_path / "hwmon0", labels=("VDD_GPU", "", "NC"))
    src = HwmonSource(tmp_path)
    assert src.read().watts == pytest.approx(5.0 * 1.2 + 4.98 * 0.4, rel=TIGHT)
    assert "sum of all channels" in src.detail and "not connected" in src.detail


def test_hwmon_without_ina_chips_is_unavailable(tmp_path):
    write(tmp_path / "hwmon0", name="nvme", temp1_input=40000)
    with pytest.raises(SourceUnavailable, match="hwmon devices here: nvme"):
        HwmonSource(tmp_path)


# Jetson -------------------------------------------------------------------------------------

def test_jetson_old_layout_iio_defaults_to_pom_5v_in(tmp_path):
    dev = tmp_path / "ina3221x" / "6-0040" / "iio:device0"
    write(dev, rail_name_0="POM_5V_IN", in_power0_input=3456, rail_name_1="POM_5V_GPU", in_power1_input=420,
          rail_name_2="POM_5V_CPU", in_current2_input=250, in_voltage2_input=5008)
    src = JetsonSource(tmp_path)
    assert src.name == "jetson" and src.read().watts == pytest.approx(3.456, rel=TIGHT)
    assert src.scope.startswith("Jetson module input rail POM_5V_IN")
    sub = JetsonSource(tmp_path, rails=["pom_5v_gpu", "POM_5V_CPU"])
    assert sub.read().watts == pytest.approx(0.42 + 0.25 * 5.008, rel=TIGHT)


def test_jetson_new_layout_hwmon_and_unknown_rail(tmp_path):
    dev = tmp_path / "ina3221" / "1-0040" / "hwmon" / "hwmon4"
    write(dev, name="ina3221", in1_label="VDD_IN", in1_input=5064, curr1_input=1480,
          in2_label="VDD_CPU_GPU_CV", in2_input=5056, curr2_input=520, in3_label="VDD_SOC", in3_input=5060,
          curr3_input=610)
    src = JetsonSource(tmp_path)
    assert src.read().watts == pytest.approx(5.064 * 1.48, rel=TIGHT)
    assert "VDD_IN is the module's total input rail" in src.detail
    with pytest.raises(SourceUnavailable) as exc:
        JetsonSource(tmp_path, rails=["VDD_GPU"])
    assert "available: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC" in str(exc.value)


def test_jetson_without_input_rail_sums_rails_and_missing_tree_is_unavailable(tmp_path):
    dev = tmp_path / "ina3221" / "1-0041" / "hwmon" / "hwmon2"
    write(dev, in1_label="VDD_GPU_SOC", in1_input=5000, curr1_input=900,
          in2_label="VDD_CPU_CV", in2_input=5000, curr2_input=300, in3_label="NC", in3_input=0, curr3_input=0)
    src = JetsonSource(tmp_path)
    assert src.read().watts == pytest.approx(5.0 * 0.9 + 5.0 * 0.3, rel=TIGHT)
    assert src.scope.startswith("sum of Jetson rails VDD_GPU_SOC + VDD_CPU_CV") and "sum of all rails" in src.detail
    with pytest.raises(SourceUnavailable, match="no Jetson INA3221 rails"):
        JetsonSource(tmp_path / "elsewhere")


def test_unlabelled_ina3221_channels_keep_each_sources_names(tmp_path):
    """Both sources read INA3221 hwmon channels through one reader; unlabelled channels keep their
    own fallback names: the I2C address on a Jetson, chip and hwmon directory under /sys/class/hwmon."""
    files = dict(in1_input=5000, curr1_input=200, in2_label="VDD_SOC", in2_input=5000, curr2_input=100)
    write(tmp_path / "i2c" / "ina3221" / "1-0040" / "hwmon" / "hwmon4", **files)
    write(tmp_path / "class" / "hwmon7", name="ina3221", **files)
    jetson = JetsonSource(tmp_path / "i2c", rails=["1-0040 channel 1"])
    hwmon = HwmonSource(tmp_path / "class", channels=["ina3221 hwmon7 channel 1"])
    assert jetson.read().watts == hwmon.read().watts == pytest.approx(1.0, rel=TIGHT)
    assert jetson.detail.startswith("1-0040 channel 1 [ina3221/1-0040/hwmon/hwmon4: in1_input, curr1_input]")
    assert hwmon.detail.startswith("ina3221 hwmon7 channel 1 [ina3221 hwmon7: in1_input, curr1_input]")


# power_supply -------------------------------------------------------------------------------


def test_discharging_battery_with_negative_current_only(tmp_path):
    write(tmp_path / "AC", type="Mains", online=0)
    write(tmp_path / "BAT0", type="Battery", status="Discharging", capacity=57, current_now=-1_250_000,
          voltage_now=11_400_000)
    write(tmp_path / "hid-mouse-battery", type="Battery", scope="Device", status="Discharging", power_now=5)
    src = PowerSupplySource(tmp_path, battery_info=lambda: None)
    sample = src.read()
    assert src.name == "power-supply"
    assert sample.watts == pytest.approx(1.25 * 11.4, rel=TIGHT) and sample.battery_percent == 57.0
    assert "system draw from battery BAT0" in src.scope and "current_now x voltage_now" in src.detail
    write(tmp_path / "BAT0", status="Charging")
    with pytest.raises(OSError, match="now charging"):
        src.read()


def test_charging_battery_is_unavailable_with_the_reason(tmp_path):
    write(tmp_path / "AC", type="Mains", online=1)
    write(tmp_path / "BAT0", type="Battery", status="Charging", capacity=80, power_now=30_000_000)
    with pytest.raises(SourceUnavailable) as exc:
        PowerSupplySource(tmp_path, battery_info=lambda: None)
    assert "battery BAT0 is charging: power_now is charge power, not the device's draw" in str(exc.value)
    assert "80%" in str(exc.value)


def test_charging_battery_with_a_usb_supply_reporting_power_uses_the_supply(tmp_path):
    write(tmp_path / "BAT0", type="Battery", status="Charging", capacity=40, power_now=9_000_000)
    write(tmp_path / "ucsi-source-psy-1", type="USB", online=1, current_now=1_500_000, voltage_now=20_000_000)
    src = PowerSupplySource(tmp_path, battery_info=lambda: None)
    assert src.read().watts == pytest.approx(30.0, rel=TIGHT) and src.read().battery_percent == 40.0
    assert "external supply ucsi-source-psy-1 (USB)" in src.scope and "battery charging" in src.scope


def test_no_sysfs_supply_but_psutil_percent_is_in_the_message(tmp_path):
    info = lambda: SimpleNamespace(percent=63.0, power_plugged=False)  # noqa: E731
    with pytest.raises(SourceUnavailable, match=r"no battery or external supply .*battery at 63%"):
        PowerSupplySource(tmp_path, battery_info=info)
    assert battery_percent(tmp_path, info) == 63.0
    assert battery_percent(tmp_path, lambda: None) is None
    write(tmp_path / "BAT1", type="Battery", status="Full", capacity=100)
    assert battery_percent(tmp_path, info) == 100.0


# Raspberry Pi 5 PMIC ------------------------------------------------------------------------

PI5_OUTPUT = """\
     3V7_WL_SW_A current(0)=0.00390372A
       3V3_SYS_A current(1)=0.05172590A
       1V8_SYS_A current(2)=0.16784710A
      DDR_VDD2_A current(3)=0.02537412A
      DDR_VDDQ_A current(4)=0.00000000A
       1V1_SYS_A current(5)=0.18640140A
       0V8_SYS_A current(6)=0.33380400A
      VDD_CORE_A current(7)=0.73950000A
       3V7_WL_SW_V volt(8)=3.68684800V
       3V3_SYS_V volt(9)=3.30453600V
       1V8_SYS_V volt(10)=1.79912100V
      DDR_VDD2_V volt(11)=1.11380000V
      DDR_VDDQ_V volt(12)=0.60548400V
       1V1_SYS_V volt(13)=1.10576200V
       0V8_SYS_V volt(14)=0.80024460V
      VDD_CORE_V volt(15)=0.77210130V
       0V8_AON_A current(16)=0.00405846A
       3V3_DAC_A current(17)=0.00048840A
       3V3_ADC_A current(18)=0.00042735A
       0V8_AON_V volt(19)=0.79989040V
       3V3_DAC_V volt(20)=3.30402900V
       3V3_ADC_V volt(21)=3.30219000V
          HDMI_A current(22)=0.02411100A
          HDMI_V volt(23)=5.15236800V
         EXT5V_V volt(24)=5.14800000V
          BATT_V volt(25)=0.00000000V
"""
PI5_RAILS = {  # rail: (A, V), copied from the output above
    "3V7_WL_SW": (0.00390372, 3.68684800), "3V3_SYS": (0.05172590, 3.30453600), "1V8_SYS": (0.16784710, 1.79912100),
    "DDR_VDD2": (0.02537412, 1.11380000), "DDR_VDDQ": (0.00000000, 0.60548400), "1V1_SYS": (0.18640140, 1.10576200),
    "0V8_SYS": (0.33380400, 0.80024460), "VDD_CORE": (0.73950000, 0.77210130), "0V8_AON": (0.00405846, 0.79989040),
    "3V3_DAC": (0.00048840, 3.30402900), "3V3_ADC": (0.00042735, 3.30219000), "HDMI": (0.02411100, 5.15236800),
}
PI5_WATTS = sum(a * v for a, v in PI5_RAILS.values())


def test_parse_pmic_adc_pairs_rails_and_skips_voltage_only_lines():
    watts, skipped = parse_pmic_adc(PI5_OUTPUT)
    assert set(watts) == set(PI5_RAILS) and skipped == ["EXT5V_V", "BATT_V"]
    assert watts["VDD_CORE"] == pytest.approx(0.73950000 * 0.77210130, rel=TIGHT)
    assert all(watts[rail] == pytest.approx(a * v, rel=TIGHT) for rail, (a, v) in PI5_RAILS.items())
    assert sum(watts.values()) == pytest.approx(PI5_WATTS, rel=TIGHT)


def test_pmic_source_sums_rails_from_recorded_output():
    src = RpiPmicSource(run=lambda: PI5_OUTPUT)
    assert src.name == "rpi-pmic" and src.measured
    assert src.scope == ("Pi 5 board rails from the PMIC (sum of rail V x I), not wall power; "
                         "excludes USB/peripherals and regulator losses")
    assert src.read().watts == pytest.approx(PI5_WATTS, rel=TIGHT)
    assert "12 rails summed" in src.detail and "EXT5V_V, BATT_V" in src.detail


def test_vcgencmd_missing_or_failing_is_unavailable(tmp_path):
    with pytest.raises(SourceUnavailable, match=r"vcgencmd not found \(Raspberry Pi OS only\)"):
        RpiPmicSource(run=vcgencmd_runner(str(tmp_path / "no-such-vcgencmd")))
    failing = tmp_path / "vcgencmd"
    failing.write_text("#!/bin/sh\necho 'VCHI initialization failed' >&2\nexit 255\n")
    failing.chmod(0o755)
    with pytest.raises(SourceUnavailable, match=r"failed \(exit 255\): VCHI initialization failed"):
        RpiPmicSource(run=vcgencmd_runner(str(failing)))
    with pytest.raises(SourceUnavailable, match="no rail"):
        RpiPmicSource(run=lambda: "error=2 error_msg=\"Command not registered\"\n")


def test_vcgencmd_runner_returns_the_command_output(tmp_path):
    fake = tmp_path / "vcgencmd"
    (tmp_path / "out.txt").write_text(PI5_OUTPUT)
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = pmic_read_adc ] || exit 3\ncat '{tmp_path / 'out.txt'}'\n")
    fake.chmod(0o755)
    assert RpiPmicSource(run=vcgencmd_runner(str(fake))).read().watts == pytest.approx(PI5_WATTS, rel=TIGHT)
