"""EPERM on the receiver's device: the cause (a device cgroup) and the fix, in one sentence."""

from __future__ import annotations

from pathlib import Path

from edgebell.radio.device_access import char_devices, explain, why_refused

PROC_DEVICES = """\
Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  4 ttyS
  5 /dev/tty
136 pts
188 ttyUSB

Block devices:
  7 loop
188 notachar
"""


def test_proc_devices_character_section() -> None:
    majors = char_devices(PROC_DEVICES)
    assert majors == {
        1: ("mem",),
        4: ("/dev/vc/0", "tty", "ttyS"),
        5: ("/dev/tty",),
        136: ("pts",),
        188: ("ttyUSB",),
    }


def test_usb_serial_driver_loaded_after_the_service_started() -> None:
    message = explain("/dev/ttyUSB0", 188, char_devices(PROC_DEVICES), under_systemd=True)
    assert message == (
        "the unit's DeviceAllow= does not cover /dev/ttyUSB0 (char-ttyUSB, major 188): "
        "the usbserial driver was not loaded when the service started; restart the service "
        "after the driver is loaded: systemctl restart edgebell"
    )


def test_cdc_acm_driver_not_loaded_at_all() -> None:
    message = explain("/dev/ttyACM0", 166, char_devices(PROC_DEVICES), under_systemd=True)
    assert "(char-ttyACM, major 166): the cdc_acm driver was not loaded" in message
    assert "(modprobe cdc_acm; it is not loaded now)" in message


def test_a_port_of_another_kind_needs_a_drop_in() -> None:
    message = explain("/dev/ttyS0", 4, char_devices(PROC_DEVICES), under_systemd=True)
    assert message == (
        "the unit's DeviceAllow= does not cover /dev/ttyS0 (char-ttyS, major 4): add it with a "
        "drop-in (systemctl edit edgebell): DeviceAllow=char-ttyS rw, then systemctl restart "
        "edgebell"
    )


def test_outside_systemd_the_cgroup_is_named_generally() -> None:
    message = explain("/dev/ttyS0", 4, {}, under_systemd=False)
    assert message.startswith("a device cgroup (a service's or container's DeviceAllow=)")


def test_the_device_behind_a_by_id_link_is_named(tmp_path: Path) -> None:
    link = tmp_path / "usb-RFLink-if00"
    link.symlink_to("/dev/null")
    message = why_refused(str(link), environ={"INVOCATION_ID": "x"}, proc_devices=lambda: "")
    assert message is not None
    assert "DeviceAllow=/dev/null rw" in message
    assert "does not cover /dev/null (major 1): " in message


def test_not_a_device_no_sentence(tmp_path: Path) -> None:
    assert why_refused(str(tmp_path / "missing")) is None
    (tmp_path / "file").write_text("")
    assert why_refused(str(tmp_path / "file")) is None


def test_without_proc_devices_the_name_comes_from_the_device() -> None:
    # The service itself runs with ProcSubset=pid: /proc/devices is hidden from it.
    message = explain("/dev/ttyAMA0", 204, None, under_systemd=True)
    assert "(char-ttyAMA, major 204): add it with a drop-in" in message
    assert "DeviceAllow=char-ttyAMA rw" in message
    usb = explain("/dev/ttyUSB0", 188, None, under_systemd=True)
    assert "modprobe" not in usb  # whether it is loaded now is unknown
