//! Fake of the Yandex Cloud Compute API and the proxy API (owned by the vm-watchdog work).
